"""Alertmanager silences as acknowledgment, and resolutions that happen under a silence.

Silencing an alert is how many on-call engineers say "I'm on it". The
watcher polls Alertmanager's API v2: an incident whose firing alerts are all
silenced is acknowledged, the actor being the silence's ``createdBy`` (with
``alertmanager.silence_comment_prefix`` set, only silences whose comment
starts with it count). A silenced alert sends no notification at all, not even
a resolved one, so the watcher also notices silenced alerts that ended (gone
from the API, or listed with a past ``endsAt``) and resolves them.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from sidecar.clock import Clock
from sidecar.errors import StoreUnavailable
from sidecar.incidents import Change, IncidentBook
from sidecar.service import IncidentService
from sidecar.tasks import BackgroundTask

log = logging.getLogger("sidecar.silences")


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class AlertStatus(_Model):
    """``alertStatus`` of API v2."""

    state: str
    silenced_by: list[str] = Field(default_factory=list, alias="silencedBy")
    inhibited_by: list[str] = Field(default_factory=list, alias="inhibitedBy")


class GettableAlert(_Model):
    """``gettableAlert`` of API v2 (the fields used here)."""

    fingerprint: str
    ends_at: datetime | None = Field(default=None, alias="endsAt")
    status: AlertStatus


class SilenceStatus(_Model):
    """``silenceStatus`` of API v2."""

    state: str


class GettableSilence(_Model):
    """``gettableSilence`` of API v2 (the fields used here)."""

    id: str
    created_by: str = Field(default="", alias="createdBy")
    comment: str = ""
    status: SilenceStatus


_ALERTS = TypeAdapter(list[GettableAlert])
_SILENCES = TypeAdapter(list[GettableSilence])


class SilenceWatcher:
    """Polls Alertmanager and turns silences into acknowledgments and resolutions."""

    def __init__(
        self,
        book: IncidentBook,
        service: IncidentService,
        clock: Clock,
        *,
        url: str,
        interval: float = 15.0,
        comment_prefix: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.book = book
        self.service = service
        self.clock = clock
        self.url = url.rstrip("/")
        self.interval = interval
        self.comment_prefix = comment_prefix
        self.timeout = timeout
        # Fingerprints seen silenced: only their disappearance means "ended under a silence".
        self._silenced: set[str] = set()
        self._session: aiohttp.ClientSession | None = None
        self._task = BackgroundTask("silence-watcher", self._loop)

    @property
    def tasks(self) -> tuple[BackgroundTask, ...]:
        """The loops this runs (for liveness)."""
        return (self._task,)

    async def start(self) -> None:
        """Start polling."""
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        self._task.start()

    async def stop(self) -> None:
        """Stop polling."""
        await self._task.stop()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _get(self, path: str) -> Any:
        assert self._session is not None, "start() first"
        async with self._session.get(f"{self.url}{path}") as resp:
            resp.raise_for_status()
            return await resp.read()

    async def poll_once(self) -> int:
        """One look at Alertmanager; returns how many incidents changed."""
        alerts = _ALERTS.validate_json(
            await self._get("/api/v2/alerts?active=true&silenced=true&inhibited=true")
        )
        silences = {s.id: s for s in _SILENCES.validate_json(await self._get("/api/v2/silences"))}
        return await self.apply(alerts, silences)

    async def apply(self, alerts: list[GettableAlert], silences: dict[str, GettableSilence]) -> int:
        """Decide on what Alertmanager reported (separate from I/O, for tests)."""
        if not self._silenced and not any(a.status.silenced_by for a in alerts):
            # Nothing silenced now or at the last look: no incident can change,
            # and reading every open incident's alerts would decode them all.
            return 0
        now = self.clock.now()
        listed = {a.fingerprint: a for a in alerts}
        commands = []
        touched: list[str] = []
        seen_silenced: set[str] = set()
        for inc in self.book.open_incidents():
            firing = inc.firing()
            if not firing:
                continue
            ended: dict[str, float] = {}
            silencers: list[GettableSilence] = []
            all_silenced = True
            for st in firing:
                am = listed.get(st.fingerprint)
                if am is None or (am.ends_at is not None and am.ends_at.timestamp() <= now):
                    if st.fingerprint in self._silenced:
                        ended[st.fingerprint] = (
                            am.ends_at.timestamp() if am is not None and am.ends_at else now
                        )
                    all_silenced = False
                    continue
                active = [
                    silences[sid]
                    for sid in am.status.silenced_by
                    if sid in silences and silences[sid].status.state == "active"
                ]
                counted = [s for s in active if self._counts(s)]
                if active:
                    seen_silenced.add(st.fingerprint)
                if counted:
                    silencers.append(counted[0])
                else:
                    all_silenced = False
            if ended:
                commands.append(self._resolve_command(inc.id, ended))
                touched.append(inc.id)
            elif all_silenced and silencers and inc.awaits_acknowledgment:
                commands.append(self._ack_command(inc.id, silencers[0]))
                touched.append(inc.id)
        if not commands:
            self._silenced = seen_silenced
            return 0

        def run(t: float) -> list[Change]:
            return [c for command in commands if (c := command(t)) is not None]

        try:
            changes = await self.service.submit(run, ids=touched)
        except BaseException:
            # Not committed: the alerts that ended under a silence must still
            # be known as silenced at the next look, or their end is never
            # noticed again and the incident stays open and escalates.
            self._silenced |= seen_silenced
            raise
        self._silenced = seen_silenced
        return len(changes)

    def _counts(self, silence: GettableSilence) -> bool:
        prefix = self.comment_prefix
        return prefix is None or silence.comment.startswith(prefix)

    def _ack_command(self, incident_id: str, silence: GettableSilence) -> Any:
        actor = silence.created_by or "alertmanager silence"
        message = f"silenced in Alertmanager by {actor} (silence {silence.id}): {silence.comment}"

        def run(now: float) -> Change | None:
            inc = self.book.get_open(incident_id)
            if inc is None or not inc.awaits_acknowledgment:
                return None
            return self.book.acknowledge(
                incident_id, actor=actor, source="silence", now=now, message=message
            )

        return run

    def _resolve_command(self, incident_id: str, ended: dict[str, float]) -> Any:
        def run(now: float) -> Change | None:
            if self.book.get_open(incident_id) is None:
                return None
            return self.book.resolve_alerts(
                incident_id,
                ended,
                now=now,
                source="silence",
                message="alerts ended while silenced (no resolved notification is sent for them)",
            )

        return run

    async def _loop(self) -> None:
        while True:
            try:
                await self.poll_once()
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.warning("cannot poll Alertmanager silences", extra={"error": str(exc)})
            except StoreUnavailable as exc:
                log.warning("silences postponed: store unavailable", extra={"error": str(exc)})
            except Exception:
                log.exception("silence watcher failed; retrying")
            await asyncio.sleep(self.interval)
