"""The reconciler: the one loop that moves every rollout forward.

Level-triggered, like a Kubernetes controller: each pass lists the rollouts that may have work
(active, started, not finished) and steps each in a transaction of its own, which first locks the
deployment's row (``rollouts.repository.lock``: ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, the write
lock on SQLite), then derives everything from committed state and applies the rules' decisions with
set-based SQL (``rollouts.service.reconcile_deployment``). Only after the commit are the released
devices told through the device channel. A pass runs when woken (a device reported an outcome, an
operator acted) and at least every ``interval`` seconds (soak times end, windows open, devices go
silent).

Several replicas may run it on one PostgreSQL: a deployment another replica is stepping is skipped,
and the next pass sees what that replica committed, so no wave opens twice and no device is
released twice. ``kill -9`` at any point loses at most an uncommitted step, which the next pass
(here or in another replica) takes again from the committed state."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import anyio
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from fleetlift.db import utcnow
from fleetlift.ports import DeviceChannel
from fleetlift.rollouts import repository, service

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 1.0
# Wake-ups closer together than this share a pass: a wave of devices reporting at once must not
# turn into one full pass per report (and a slow pass stretches the gap: at most a ninth of the
# time is spent in passes).
MIN_GAP = 0.1
REST_FACTOR = 8  # after a pass, wait this many times its length before the next (within interval)
BATCH = 500  # rollouts listed per query of a pass


class Reconciler:
    """Steps rollouts; ``run`` is its loop (in the application's lifespan), ``run_once`` and
    ``step`` do one pass or one deployment (tests drive these with their own clock)."""

    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        channel: DeviceChannel | None = None,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], datetime] = utcnow,
        batch: int = BATCH,
        min_gap: float = MIN_GAP,
    ) -> None:
        self.sessions = sessions
        self.channel = channel
        self.interval = interval
        self.min_gap = min(min_gap, interval)
        self.clock = clock
        self.batch = batch
        self.passes = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._wakeup: asyncio.Event | None = None
        self._lock = threading.Lock()
        self._notifying: set[asyncio.Task[None]] = set()

    # -- one deployment, one pass ------------------------------------------------------------

    def step(
        self, tenant_id: str, deployment_id: str, *, now: datetime | None = None, skip_locked: bool = True
    ) -> list[str]:
        """Step one rollout in its own transaction; the devices it released (told nothing yet).
        With ``skip_locked`` a rollout another transaction is stepping is left to it."""
        with self.sessions() as session:
            try:
                deployment = repository.lock(
                    session, tenant_id=tenant_id, deployment_id=deployment_id, skip_locked=skip_locked
                )
                if deployment is None:
                    session.rollback()
                    return []
                released = service.reconcile_deployment(session, deployment, now or self.clock())
                session.commit()
            except BaseException:
                session.rollback()
                raise
        return released

    def run_once(self, now: datetime | None = None) -> dict[str, list[str]]:
        """One pass over every rollout that may have work; released devices per tenant."""
        now = now or self.clock()
        released: dict[str, list[str]] = defaultdict(list)
        after: tuple[str, str] | None = None
        while True:  # page by page, so every rollout gets its step however many there are
            with self.sessions() as session:
                found = repository.candidates(session, now=now, limit=self.batch, after=after)
            for tenant_id, deployment_id in found:
                try:
                    released[tenant_id] += self.step(tenant_id, deployment_id, now=now)
                except Exception:
                    log.exception("could not step rollout %s", deployment_id)
            if len(found) < self.batch:
                break
            after = found[-1]
        self.passes += 1
        return {tenant: ids for tenant, ids in released.items() if ids}

    # -- the loop ----------------------------------------------------------------------------

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop that tells devices (``notify_soon``), also while the loop is not run."""
        with self._lock:
            self._loop = loop

    def wake(self) -> None:
        """Ask for a pass now; callable from any thread (device reports commit in worker threads)."""
        with self._lock:
            loop, wakeup = self._loop, self._wakeup
        if loop is None or wakeup is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody to wake
            loop.call_soon_threadsafe(wakeup.set)

    def stop(self) -> None:
        """End ``run`` after the pass under way (callable from any thread)."""
        self._stopping = True
        self.wake()

    async def run(self) -> None:
        """Pass after pass until stopped or cancelled: when woken, and at least every ``interval``
        seconds."""
        wakeup = asyncio.Event()
        self._stopping = False
        with self._lock:
            self._loop, self._wakeup = asyncio.get_running_loop(), wakeup
        try:
            gap = self.min_gap
            while not self._stopping:
                await asyncio.sleep(gap)
                if self._stopping:
                    break
                wakeup.clear()
                started = time.monotonic()
                try:
                    released = await anyio.to_thread.run_sync(self.run_once)
                except Exception:  # the database may be briefly unavailable; the next pass retries
                    log.exception("reconciler pass failed")
                    released = {}
                # Woken without pause (devices report all the time in a big wave), passes would
                # keep the database busy counting (a pass recounts the deployment: 32 ms of
                # PostgreSQL at 100,000 devices, docs/benchmarks.md): rest eight times as long.
                gap = min(max(self.min_gap, REST_FACTOR * (time.monotonic() - started)), self.interval)
                for tenant_id, device_ids in released.items():
                    # A channel may take a while to fan a wave out (MQTT waits for the broker's
                    # acknowledgements): the next pass must not wait for it.
                    self._notify_in_background(tenant_id, device_ids)
                # asyncio.wait, not wait_for: on Python 3.11 wait_for can swallow a cancellation
                # that arrives as the wake-up does, and the loop would never end.
                woken = asyncio.ensure_future(wakeup.wait())
                try:
                    await asyncio.wait({woken}, timeout=self.interval)
                finally:
                    woken.cancel()
        finally:
            with self._lock:
                self._wakeup = None
            for task in list(self._notifying):  # shutting down: devices still poll
                task.cancel()

    # -- telling devices ---------------------------------------------------------------------

    async def notify(self, tenant_id: str, device_ids: Sequence[str]) -> None:
        """Tell released devices through the channel; a channel failure only delays them (they
        poll anyway)."""
        channel = self.channel
        if channel is None or not device_ids:
            return
        try:
            await channel.notify(tenant_id, list(device_ids))
        except Exception:
            log.exception("could not notify %d released devices", len(device_ids))

    def _notify_in_background(self, tenant_id: str, device_ids: Sequence[str]) -> None:
        task = asyncio.get_running_loop().create_task(self.notify(tenant_id, list(device_ids)))
        self._notifying.add(task)  # asyncio keeps only weak references to tasks
        task.add_done_callback(self._notifying.discard)

    def notify_soon(self, tenant_id: str, device_ids: Sequence[str]) -> None:
        """``notify`` from any thread, on the loop (devices released by a request's transaction)."""
        with self._lock:
            loop = self._loop
        if loop is None or self.channel is None or not device_ids:
            return
        with contextlib.suppress(RuntimeError):
            asyncio.run_coroutine_threadsafe(self.notify(tenant_id, list(device_ids)), loop)


def install_release_hooks(sessions: sessionmaker[Session], notify: Callable[[str, list[str]], Any]) -> None:
    """After a commit that released devices (``service.note_released``), call ``notify`` per tenant."""

    def committed(session: Session) -> None:
        released = session.info.pop(service.RELEASED, None)
        for tenant_id, device_ids in (released or {}).items():
            try:
                notify(tenant_id, device_ids)
            except Exception:
                log.exception("could not hand released devices to the channel")

    def rolled_back(session: Session, *_args: Any) -> None:
        session.info.pop(service.RELEASED, None)

    event.listen(sessions, "after_commit", committed)
    event.listen(sessions, "after_soft_rollback", rolled_back)
