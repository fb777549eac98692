"""Commands plan what their changes send: :func:`planned` runs the integrations' planners.

A book command (:mod:`~sidecar.incidents.grouping`, :mod:`~sidecar.incidents.stepping`,
:mod:`~sidecar.incidents.commands`) returns its changes with the outbox rows they
cause, so the service persists exactly what it is handed.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from sidecar.incidents.model import Change


class Planner(Protocol):
    """An integration planning what a change sends (``sidecar.notify.pagerduty.Pager``)."""

    def plan(self, change: Change, now: float) -> None:
        """Add the change's outbox rows (and the timeline events that say so)."""


class _Book(Protocol):
    """What :func:`planned` needs of the book (``sidecar.incidents.core.BookCore``)."""

    _depth: int

    @property
    def planners(self) -> Sequence[Planner]: ...

    def undo(self, change: Change) -> None: ...


C = TypeVar("C", bound="Change | list[Change] | None")


def planned(command: Callable[..., C]) -> Callable[..., C]:
    """Make a book command plan the notifications of the changes it returns.

    Right after the command, while each incident is as the command left it (a
    later command of the same batch may resolve the incident this one opened,
    and both its trigger and its resolve must go out, in order), and inside the
    command, so the service only persists what it is handed. A planner that
    fails is a bug, not the caller's input: the command's changes are undone
    and it raises :class:`CommandFailed`.
    """

    # Where ``now`` is among the positional arguments (self excluded).
    at = list(inspect.signature(command).parameters).index("now") - 1

    @functools.wraps(command)
    def run(self: _Book, *args: Any, **kwargs: Any) -> C:
        self._depth += 1
        try:
            result = command(self, *args, **kwargs)
        finally:
            self._depth -= 1
        if not self.planners or self._depth or result is None:
            return result  # a command run by another plans with it, once
        changes = [result] if isinstance(result, Change) else result
        now = kwargs["now"] if "now" in kwargs else args[at]
        try:
            for change in changes:
                for planner in self.planners:
                    planner.plan(change, now)
        except Exception as exc:
            for change in reversed(changes):
                self.undo(change)
            raise CommandFailed(f"internal error: {exc}") from exc
        return result

    return run


class CommandFailed(RuntimeError):
    """A command's notifications could not be planned (a bug); its changes were undone."""
