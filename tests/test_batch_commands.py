"""Commands in the service's batches: all or nothing, and numbered as they open.

Only a bug makes a command raise after it began an incident (a rule, a planner,
the third of several deadlines); the service then answers that caller with the
error, and nothing of the command may stay in memory (``BookCore.all_or_nothing``):
not an open incident taken out of the index while the store still holds it open,
not changes no batch writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

import pytest

from sidecar.alertmanager import Notification, notification_from
from sidecar.incidents import Change
from sidecar.rules import RuleEscalation
from sidecar.runtime import Components
from tests.payloads import alert, notification

T0 = 1_700_000_000.0


class _RulesWithABug:
    """The real rules, except that escalation rules raise on an alert labelled ``boom``."""

    def __init__(self, rules: Any) -> None:
        self.rules = rules

    def __getattr__(self, name: str) -> Any:
        return getattr(self.rules, name)

    def escalations_each(
        self, alerts: Iterable[tuple[Mapping[str, str], Mapping[str, str]]]
    ) -> Sequence[Sequence[RuleEscalation]]:
        alerts = list(alerts)
        if any("boom" in labels for labels, _ in alerts):
            raise RuntimeError("a bug in the rules")
        result: Sequence[Sequence[RuleEscalation]] = self.rules.escalations_each(alerts)
        return result


@pytest.fixture
async def running(components: Components) -> AsyncIterator[Components]:
    await components.store.open()
    await components.service.start()
    try:
        yield components
    finally:
        await components.service.stop()
        await components.store.close()


async def _apply(c: Components, n: Notification) -> list[Change]:
    return await c.service.submit(
        lambda now: c.book.apply_notification(n, now),
        keys=c.book.keys_of(n),
        unchanged=lambda: c.book.repeats_open(n),
    )


async def test_a_notification_that_raises_midway_leaves_its_open_incident_in_place(
    running: Components,
) -> None:
    c = running
    first = alert("DBDown", fingerprint="00000000000000d1", starts=T0)
    (opened,) = await _apply(c, notification_from(notification(first, group_key="g")))
    rules = c.book.classifier
    c.book.classifier = _RulesWithABug(rules)
    bad = alert("DBDown", fingerprint="00000000000000d2", starts=T0, labels={"boom": "1"})
    with pytest.raises(RuntimeError, match="a bug in the rules"):
        await _apply(c, notification_from(notification(first, bad, group_key="g")))

    held = c.book.open_for("g")
    assert held is not None and held.id == opened.incident.id
    assert set(held.alerts) == {"00000000000000d1"}
    assert sum(c.book.open_counts.values()) == 1
    # The bug fixed, the group's next notification joins the same incident: no
    # second incident on the key (which the store would refuse for ever).
    c.book.classifier = rules
    second = alert("DBDown", fingerprint="00000000000000d3", starts=T0)
    (joined,) = await _apply(c, notification_from(notification(first, second, group_key="g")))
    assert joined.incident.id == opened.incident.id
    assert set(joined.incident.alerts) == {"00000000000000d1", "00000000000000d3"}


async def test_a_command_on_several_incidents_that_raises_keeps_none_of_its_changes(
    running: Components,
) -> None:
    c = running
    (a,) = await _apply(c, notification_from(notification(alert("A", starts=T0), group_key="a")))
    a_id = a.incident.id

    def acknowledge_then_fail(now: float) -> list[Change]:
        changes = [c.book.acknowledge(a_id, actor="jane", source="api", now=now)]
        opened = c.book.apply_notification(
            notification_from(notification(alert("B", starts=T0), group_key="b")), now
        )
        assert opened and all(changes)
        raise RuntimeError("the third step has a bug")

    with pytest.raises(RuntimeError, match="third step"):
        await c.service.submit(acknowledge_then_fail, keys=["b"], ids=[a_id])

    back = c.book.get_open(a_id)
    assert back is not None and back.state == "triggered" and back.acknowledged_at is None
    assert c.book.open_for("b") is None
    assert c.book.open_counts[(back.severity, "acknowledged")] == 0
    assert sum(c.book.open_counts.values()) == 1
    # The store agrees with memory: the acknowledgment was never written.
    stored = await c.store.get_incident(a_id)
    assert stored is not None and stored.state == "triggered"


async def test_an_incident_opened_in_the_batch_that_closed_the_last_one_gets_a_number(
    running: Components,
) -> None:
    # Both notifications in one batch: the key had an open incident when the batch
    # began, and the second opens a new one after the first closed it.
    c = running
    fp = "00000000000000c1"
    first = notification(alert(fingerprint=fp, starts=T0), group_key="g")
    (opened,) = await _apply(c, notification_from(first))
    ended = alert(fingerprint=fp, starts=T0, status="resolved", ends=T0 + 100)
    resolved = notification(ended, group_key="g")
    refired = notification(alert(fingerprint=fp, starts=T0 + 200), group_key="g")
    closing, reopening = await asyncio.gather(
        _apply(c, notification_from(resolved)), _apply(c, notification_from(refired))
    )
    assert closing[0].incident.state == "resolved"
    new = reopening[0].incident
    assert new.id != opened.incident.id
    assert opened.incident.number is not None and new.number is not None
    assert new.number > opened.incident.number
    stored = await c.store.get_incident(new.id)
    assert stored is not None and stored.number == new.number
