"""The device poll's hot path: what a device should install now, answered from one indexed query.

Every gateway of a fleet polls, so this is the request the server answers most:

- the token's ES256 signature is checked once and then remembered (``tokens.VerifiedTokens``); the
  device's admission and revocation are read on every poll, in the same query that finds the
  deployment, so rejecting or decommissioning a device takes effect at once in every process;
- the answer's ETag comes from that query, so a 304 is given without loading the release;
  releases are cached by ``(tenant, id, row_version)``, which any change to a release bumps;
- ``last_seen_at`` is written at most once per ``seen_resolution`` per device, in batches;
- a long poll sleeps until this process commits a change to a deployment of the device's tenant
  (``PollNotifier``), re-checking the database every ``recheck_seconds`` anyway, so changes made by
  other server processes, and deployments whose ``start_at`` comes, are seen too.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import chain
from typing import TYPE_CHECKING, Any

import anyio
from sqlalchemy import Engine, event
from sqlalchemy.orm import Session, sessionmaker

from fleetlift.db import utcnow
from fleetlift.deployments import repository as deployments
from fleetlift.deployments.models import Deployment
from fleetlift.deployments.rules import DeviceReport, DeviceUpdateState, transition
from fleetlift.device_api import repository
from fleetlift.device_api.rules import etag_matches, poll_etag, seen_is_stale, token_refusal
from fleetlift.device_api.tokens import DeviceClaims, DeviceTokens
from fleetlift.errors import FleetliftError, Unauthenticated
from fleetlift.releases import repository as releases
from fleetlift.wakeups import Wakeups

if TYPE_CHECKING:
    from fleetlift.device_api.reports import ReportBatcher

log = logging.getLogger(__name__)

# Several times the default poll interval (60 s): a device polling on schedule is written once in
# five polls, not on every one. Operators read "last seen" at minutes, not seconds.
SEEN_RESOLUTION = timedelta(minutes=5)
SEEN_FLUSH_SECONDS = 1.0
SEEN_MAX_BATCH = 5_000
RECHECK_SECONDS = 5.0


@dataclass(frozen=True)
class ReleaseView:
    """The part of a release a device is told about."""

    id: str
    name: str
    version: str
    kind: str
    payloads: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class PollAnswer:
    """The update a device should work on; ``release`` is ``None`` when its ETag matched (304)."""

    deployment_id: str
    state: str
    etag: str
    release: ReleaseView | None
    forced: bool = False  # the rollout's mode: install as soon as possible, no deferring


class PollNotifier(Wakeups):
    """Wakes the long polls of this process when a deployment of their tenant changes (keys are
    tenant IDs)."""

    def signal(self, tenant_ids: Iterable[str]) -> None:
        """Deployments of these tenants changed: wake their waiting polls."""
        self.wake(tenant_ids)


_CHANGED_TENANTS = "fleetlift.deployments_changed"


def deployments_changed(session: Session, tenant_id: str) -> None:
    """Mark that this transaction changes what devices of the tenant should install; waiting polls
    of this process wake when it commits. Changes to ``Deployment`` rows are noticed without it;
    code that only writes ``deployment_devices`` with bulk SQL (opening a wave) calls it."""
    session.info.setdefault(_CHANGED_TENANTS, set()).add(tenant_id)


def install_session_hooks(sessions: sessionmaker[Session], notifier: PollNotifier) -> None:
    """Signal ``notifier`` after every commit that created or changed a deployment."""

    def flushed(session: Session, _context: Any) -> None:
        for item in chain(session.new, session.dirty, session.deleted):
            if isinstance(item, Deployment):
                deployments_changed(session, item.tenant_id)

    def committed(session: Session) -> None:
        tenants = session.info.pop(_CHANGED_TENANTS, None)
        if tenants:
            notifier.signal(tenants)

    def rolled_back(session: Session, *_args: Any) -> None:
        session.info.pop(_CHANGED_TENANTS, None)

    event.listen(sessions, "after_flush", flushed)
    event.listen(sessions, "after_commit", committed)
    event.listen(sessions, "after_soft_rollback", rolled_back)


class SeenRecorder:
    """Devices seen since the last flush, written together; thread-safe."""

    def __init__(self, resolution: timedelta) -> None:
        self.resolution = resolution
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str], datetime] = {}

    def note(self, tenant_id: str, device_id: str, now: datetime) -> int:
        """Remember a device was seen; how many devices wait to be written."""
        with self._lock:
            self._pending[(tenant_id, device_id)] = now
            return len(self._pending)

    def take(self) -> list[tuple[str, str, datetime, datetime]]:
        with self._lock:
            pending, self._pending = self._pending, {}
        return [(tenant, device, at, at - self.resolution) for (tenant, device), at in pending.items()]

    def __len__(self) -> int:
        return len(self._pending)


class ReleaseCache:
    """Releases as devices see them, keyed by ``(tenant, id, row_version)``: a change to a release
    bumps its row version, so an entry is never stale, in any process."""

    def __init__(self, max_entries: int = 1024) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str, int], ReleaseView] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, int]) -> ReleaseView | None:
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
            return found

    def put(self, key: tuple[str, str, int], release: ReleaseView) -> None:
        with self._lock:
            self._entries[key] = release
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)


class _MustWrite:
    """A poll that must write (pending becomes notified), or load a release on a network database:
    not done on the event loop."""


_MUST_WRITE = _MustWrite()


@dataclass(frozen=True)
class _MustMark:
    """A poll that tells the device of a deployment for the first time: ``pending`` becomes
    ``notified`` before it is answered (with other polls' and reports' changes, in one batch)."""

    deployment_id: str


class DevicePoller:
    """Answers device polls; one per application (``app.state.device_poller``)."""

    def __init__(
        self,
        *,
        engine: Engine,
        sessions: sessionmaker[Session],
        tokens: DeviceTokens,
        notifier: PollNotifier,
        seen_resolution: timedelta = SEEN_RESOLUTION,
        recheck_seconds: float = RECHECK_SECONDS,
        inline_reads: bool = False,
        reports: ReportBatcher,
    ) -> None:
        self.sessions = sessions
        self.query = deployments.PollQuery(engine)
        # On an embedded SQLite database a poll that only reads (nearly all of them) costs less
        # than handing it to a worker thread, and a WAL reader never waits for a lock: it runs on
        # the event loop. A poll that must write, and every poll on a network database, goes to
        # the thread pool.
        self.inline_reads = inline_reads
        self.tokens = tokens
        self.notifier = notifier
        self.seen = SeenRecorder(seen_resolution)
        self.releases = ReleaseCache()
        self.reports = reports  # the poll's own write (pending becomes notified) is batched with reports
        self.recheck_seconds = recheck_seconds
        self._limiter: tuple[asyncio.AbstractEventLoop, anyio.CapacityLimiter] | None = None

    async def authenticate(self, token: str) -> DeviceClaims:
        """The claims of a device token: from the cache, or verified here, on the event loop.

        A signature check is about 0.15 ms of CPU (ES256); handing it to a worker thread and back
        cost as much again, and a thread gives no more CPU than the loop has. Each server process
        checks each token once, so after a restart most polls are first checks for a while."""
        claims = self.tokens.verified.get(token, time.time())
        if claims is not None:
            return claims
        return self.tokens.verify(token)

    async def next_update(
        self, claims: DeviceClaims, *, wait: int, if_none_match: str | None
    ) -> PollAnswer | None:
        """The update the device should work on now; with ``wait``, hold until one appears."""
        deadline = time.monotonic() + wait
        while True:
            generation = self.notifier.generation(claims.tenant_id)
            found = await self._check(claims, if_none_match)
            remaining = deadline - time.monotonic()
            if found is not None or remaining <= 0:
                return found
            await self.notifier.wait(claims.tenant_id, generation, min(remaining, self.recheck_seconds))

    async def _check(self, claims: DeviceClaims, if_none_match: str | None) -> PollAnswer | None:
        found: PollAnswer | _MustWrite | _MustMark | None = _MUST_WRITE
        now = utcnow()
        row: deployments.PollRow | None = None
        if self.inline_reads:
            row = self.query.run(tenant_id=claims.tenant_id, device_id=claims.device_id, now=now)
            found = self._answer(claims, row, if_none_match, now, may_write=False, may_load=True)
        elif self.query.runs_on_loop:
            # PostgreSQL through psycopg: the query is awaited on the event loop; a poll that must
            # load a release not cached yet is done again on a worker thread.
            row = await self.query.run_async(tenant_id=claims.tenant_id, device_id=claims.device_id, now=now)
            found = self._answer(claims, row, if_none_match, now, may_write=False, may_load=False)
        if isinstance(found, _MustMark):
            await self.reports.record(self._notified(claims, found.deployment_id))
            found = self._answer(
                claims, row, if_none_match, now, may_write=False, may_load=self.inline_reads, marked=True
            )
        if not isinstance(found, _MustWrite | _MustMark):
            return found
        # As many threads as the poll query has connections: more would only wait for one (and
        # contend for the interpreter lock meanwhile) instead of waiting here, on the event loop.
        loop = asyncio.get_running_loop()
        if self._limiter is None or self._limiter[0] is not loop:  # a limiter belongs to one loop
            self._limiter = (loop, anyio.CapacityLimiter(deployments.POLL_QUERY_CONNECTIONS))
        return await anyio.to_thread.run_sync(self.check, claims, if_none_match, limiter=self._limiter[1])

    @staticmethod
    def _notified(claims: DeviceClaims, deployment_id: str) -> DeviceReport:
        device, issued_at, notified = claims.device_id, claims.issued_at, DeviceUpdateState.NOTIFIED
        return DeviceReport(claims.tenant_id, deployment_id, device, notified, None, issued_at)

    def check(self, claims: DeviceClaims, if_none_match: str | None) -> PollAnswer | None:
        """One poll: admission, the deployment, its ETag, and recording that the device was told."""
        found = self._poll(claims, if_none_match, may_write=True)
        assert not isinstance(found, _MustWrite | _MustMark)
        return found

    def _poll(
        self, claims: DeviceClaims, if_none_match: str | None, *, may_write: bool
    ) -> PollAnswer | _MustWrite | _MustMark | None:
        """``check``; with ``may_write`` false, a poll that has to write stops before it does."""
        now = utcnow()
        row = self.query.run(tenant_id=claims.tenant_id, device_id=claims.device_id, now=now)
        return self._answer(claims, row, if_none_match, now, may_write=may_write, may_load=True)

    def _answer(
        self,
        claims: DeviceClaims,
        row: deployments.PollRow | None,
        if_none_match: str | None,
        now: datetime,
        *,
        may_write: bool,
        may_load: bool,
        marked: bool = False,
    ) -> PollAnswer | _MustWrite | _MustMark | None:
        """The answer the poll query's row gives; ``_MustMark`` when the device must be recorded as
        notified and the caller may not write (``marked``: the caller has recorded it), and
        ``_MUST_WRITE`` for (without ``may_load``) a release that is not cached."""
        refusal = token_refusal(
            None if row is None else row.status,
            None if row is None else row.tokens_valid_after,
            claims.issued_at,
        )
        if refusal is not None or row is None:
            raise Unauthenticated(refusal or "the device is no longer admitted")
        if (
            row.deployment_id is None
            or row.state is None
            or row.release_id is None
            or row.release_row_version is None
        ):
            self._seen(claims, row.last_seen_at, now, may_write=may_write)
            return None
        state = DeviceUpdateState(row.state)
        outcome = transition(state, DeviceUpdateState.NOTIFIED)
        if outcome.changed and not marked:  # telling the device is recorded: pending becomes notified, once
            if not may_write:
                return _MustMark(row.deployment_id)
            (recorded,) = self.reports.write([self._notified(claims, row.deployment_id)])
            if isinstance(recorded, FleetliftError):
                raise recorded
        self._seen(claims, row.last_seen_at, now, may_write=may_write)
        etag = poll_etag(row.deployment_id, row.release_id, row.release_row_version)
        release = None
        if not etag_matches(if_none_match, etag):
            key = (claims.tenant_id, row.release_id, row.release_row_version)
            release = self.releases.get(key)
            if release is None:
                if not may_load:
                    return _MUST_WRITE
                release = self._release(*key)
        return PollAnswer(row.deployment_id, outcome.state.value, etag, release, forced=row.mode == "forced")

    def _seen(
        self, claims: DeviceClaims, last_seen_at: datetime | None, now: datetime, *, may_write: bool
    ) -> None:
        """Note the device as seen when its stored time is stale; a full batch is written at once
        (by a poll that may write; otherwise by the next flush)."""
        if not seen_is_stale(last_seen_at, now, self.seen.resolution):
            return
        if self.seen.note(claims.tenant_id, claims.device_id, now) >= SEEN_MAX_BATCH and may_write:
            self.flush_seen()

    def _release(self, tenant_id: str, release_id: str, row_version: int) -> ReleaseView:
        key = (tenant_id, release_id, row_version)
        cached = self.releases.get(key)
        if cached is not None:
            return cached
        with self.sessions() as session:
            found = releases.get(session, tenant_id=tenant_id, release_id=release_id)
        if found is None:  # a deployment always names an existing release (foreign key)
            raise LookupError(release_id)
        view = ReleaseView(found.id, found.name, found.version, found.kind, tuple(found.payloads))
        if found.row_version == row_version:
            self.releases.put(key, view)
        return view

    def flush_seen(self) -> int:
        """Write the devices seen since the last flush; how many."""
        seen = self.seen.take()
        if seen:
            with self.sessions() as session:
                repository.record_seen(session, seen=seen)
                session.commit()
        return len(seen)

    async def run(self, interval: float = SEEN_FLUSH_SECONDS) -> None:
        """Flush ``last_seen_at`` every ``interval`` until cancelled, and once more then."""
        try:
            while True:
                await anyio.sleep(interval)
                if len(self.seen):
                    try:
                        await anyio.to_thread.run_sync(self.flush_seen)
                    except Exception:  # the database may be briefly unavailable; try again later
                        log.exception("could not record when devices were last seen")
        finally:
            try:  # at shutdown: a short blocking write is fine
                self.flush_seen()
            except Exception:
                log.exception("could not record when devices were last seen")
