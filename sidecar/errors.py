"""Errors of the sidecar's domain, documented once here.

Exception hierarchy::

    SidecarError
    ├── ConfigError          configuration or rules are invalid (fatal at start,
    │                        logged and ignored on reload)
    ├── StoreUnavailable     the store cannot commit or read right now (HTTP 503)
    │   └── StoreRefused     the store refused a value of the batch: the same
    │                        batch fails again (its commands are retried alone)
    ├── IncidentNotFound     no incident with that id or number (HTTP 404)
    ├── InvalidTransition    the incident cannot make that change (HTTP 409)
    └── InvalidRequest       the request names what the plan does not have: a status,
                             a role, a severity, a tier (HTTP 400)

The web layer translates these into HTTP codes in one place; domain code never
knows about HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass


class SidecarError(Exception):
    """Base class of every error the sidecar raises on purpose."""


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One problem in a configuration or rules file."""

    file: str
    location: str
    reason: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        loc = f" {self.location}:" if self.location else ""
        return f"{where}:{loc} {self.reason}"


class ConfigError(SidecarError):
    """Configuration or rules are invalid; carries every problem found."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class StoreUnavailable(SidecarError):
    """The store could not commit or read; the caller should retry later."""


class StoreRefused(StoreUnavailable):
    """The store refused what a batch holds (a value it cannot store), not the connection."""


class IncidentNotFound(SidecarError):
    """No incident has the requested id."""


class InvalidTransition(SidecarError):
    """The requested change does not apply to the incident in its current state."""


class InvalidRequest(SidecarError):
    """The request names something the plan does not declare (a status, role, severity, tier)."""
