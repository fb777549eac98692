"""The plan's people and states: the roles an incident is run by, and its statuses.

Plan 000 names the roles (Incident Commander, Subject Matter Experts,
Communications Lead, Scribe) and the review's owner and attendees; both plans
post a status with every update (``Investigating | Identified | Monitoring |
Resolved``). The statuses are the rules file's (``statuses``), so each preset
declares its plan's; the roles are the same for every plan.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sidecar.errors import InvalidRequest

ROLES: Mapping[str, str] = {
    "incident_commander": "Incident Commander",
    "smes": "Subject Matter Experts",
    "communications_lead": "Communications Lead",
    "scribe": "Scribe",
    "pir_owner": "PIR Owner",
}
"""Each role's name in the API and its title in the plan, in the plan's order."""
MANY = frozenset({"smes"})
"""Roles several people hold at once (a list); the others are held by one person."""
MAX_NAME = 200


def holder(role: str, value: Any) -> str | list[str] | None:
    """``value`` checked as the holder of ``role``: a name, names for ``smes``, None to clear.

    Raises :class:`InvalidRequest` naming the roles when ``role`` is not one,
    or when the value is not a name (a list of names for ``smes``).
    """
    if role not in ROLES:
        raise InvalidRequest(f"unknown role {role!r}; the roles are {', '.join(ROLES)}")
    if value is None:
        return None
    if role in MANY:
        names = value if isinstance(value, list) else None
        if names is None or not all(_is_name(n) for n in names):
            raise InvalidRequest(f"{role} must be a list of names (or null to clear it)")
        # Each once, in the order given.
        return list(dict.fromkeys(n.strip() for n in names)) or None
    if not _is_name(value):
        raise InvalidRequest(
            f"{role} must be a name of 1 to {MAX_NAME} characters (or null to clear it)"
        )
    return str(value).strip()


def _is_name(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value.strip()) <= MAX_NAME


def attendees(roles: Mapping[str, Any]) -> list[str]:
    """Everyone holding a role, each once, in the plan's order of roles."""
    people: dict[str, None] = {}
    for role in ROLES:
        held = roles.get(role)
        for name in [held] if isinstance(held, str) else held or ():
            people.setdefault(name)
    return list(people)


def describe(role: str, value: str | Sequence[str] | None) -> str:
    """``Incident Commander: alice`` / ``Scribe: unassigned``, for the timeline."""
    title = ROLES[role]
    if value is None:
        return f"{title}: unassigned"
    return f"{title}: {value if isinstance(value, str) else ', '.join(value)}"


def check_status(status: str, statuses: Sequence[str]) -> str:
    """``status`` if the plan declares it; else :class:`InvalidRequest` listing the allowed."""
    if not statuses:
        raise InvalidRequest("the rules declare no statuses (add statuses: to the rules file)")
    if status not in statuses:
        raise InvalidRequest(f"status must be one of {', '.join(statuses)}; got {status!r}")
    return status
