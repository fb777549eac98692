"""The incident book: every open incident, and the commands that move it through its lifecycle.

An :class:`IncidentBook` turns commands (an Alertmanager notification, an
acknowledgment, a resolution, a passing deadline) into
:class:`~sidecar.incidents.model.Change` objects: the incident as it is now,
the timeline events to append and the effects to publish once the change is
committed. Nothing here writes anywhere; the service commits changes and only
then publishes their effects, or undoes them when the commit fails.

It is made of one module per concern, each a layer of the one before:
:mod:`~sidecar.incidents.core` (state, indexes, undo),
:mod:`~sidecar.incidents.stepping` (SLA deadlines and escalation),
:mod:`~sidecar.incidents.grouping` (notifications),
:mod:`~sidecar.incidents.watch` (the recovery watch, which reopens),
:mod:`~sidecar.incidents.commands` (people and integrations) and
:mod:`~sidecar.incidents.leading` (the Incident Commander's actions).
"""

from __future__ import annotations

from sidecar.incidents.commands import Commands
from sidecar.incidents.leading import Leading
from sidecar.incidents.watch import Watching


class IncidentBook(Watching, Commands, Leading):
    """Every open incident, and the rules that move them through their lifecycle."""
