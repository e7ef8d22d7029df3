"""The IoT Hub worker: the background loop that syncs each hub's devices when due and reconciles its
deliveries (configurations to create, to retire, statuses to read).

Level-triggered like the rollout reconciler: every pass derives its work from committed state, so a
pass that dies half-way is taken up again by the next one. A replica works on a hub only while it
holds the hub's lease (a conditional UPDATE), so replicas never create the same configuration twice;
within a process one pass runs at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Callable
from datetime import datetime, timedelta

import anyio
from sqlalchemy.orm import Session, sessionmaker

from fleetlift.db import transaction, utcnow
from fleetlift.errors import FleetliftError
from fleetlift.iothub import repository, service
from fleetlift.iothub.models import IotHub

log = logging.getLogger("fleetlift.iothub")

# Longer than any pass can take (each configuration operation waits at most a minute for its turn);
# a replica that dies holding it delays that hub by this much at worst.
LEASE = timedelta(minutes=15)


class IotHubWorker:
    """Built in ``create_app``; ``run`` in the lifespan, ``run_once`` from tests and the loop."""

    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        clients: service.HubClients,
        interval: float = 10.0,
        status_interval: float = 60.0,
        clock: Callable[[], datetime] = utcnow,
        max_configurations: int = service.MAX_CONFIGURATIONS,
    ) -> None:
        self.sessions = sessions
        self.clients = clients
        self.interval = interval
        self.status_interval = status_interval
        self.clock = clock
        self.max_configurations = max_configurations
        self.passes = 0
        # (hub ID, "sync" or "pass") -> what was last logged of its failure
        self._said: dict[tuple[str, str], str] = {}
        # Per event loop: a lifespan may run more than once, even nested on other loops (test
        # clients do), and asyncio primitives belong to one loop.
        self._pass_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )
        self._stops: dict[asyncio.AbstractEventLoop, asyncio.Event] = {}

    def _say_once(self, about: tuple[str, str], message: str, detail: str) -> None:
        """A hub that is misconfigured or unreachable stays so for many passes: a failure of its
        sync or of its pass is logged once, and again only when what is wrong changes or after
        it worked in between."""
        if self._said.get(about) != detail:
            self._said[about] = detail
            log.warning(message, about[0], detail)

    def _hubs(self) -> list[tuple[str, str]]:
        with self.sessions() as session:
            return repository.all_hub_keys(session)

    def _claim(self, tenant_id: str, hub_id: str, now: datetime) -> IotHub | None:
        with transaction(self.sessions) as session:
            if not repository.claim_hub(
                session, tenant_id=tenant_id, hub_id=hub_id, now=now, until=now + LEASE
            ):
                return None
            hub = repository.get_hub(session, tenant_id=tenant_id, hub_id=hub_id)
            if hub is not None:
                session.expunge(hub)
            return hub

    def _release(self, tenant_id: str, hub_id: str) -> None:
        with transaction(self.sessions) as session:
            repository.release_hub(session, tenant_id=tenant_id, hub_id=hub_id)

    @staticmethod
    def _sync_due(hub: IotHub, now: datetime) -> bool:
        if hub.sync_interval_seconds <= 0:
            return False
        return (
            hub.last_sync_at is None or hub.last_sync_at + timedelta(seconds=hub.sync_interval_seconds) <= now
        )

    async def run_hub(self, tenant_id: str, hub_id: str, *, status_interval: float | None = None) -> bool:
        """Sync (when due) and reconcile one hub under its lease; whether this replica got the lease."""
        now = self.clock()
        hub = await anyio.to_thread.run_sync(self._claim, tenant_id, hub_id, now)
        if hub is None:
            return False
        try:
            if self._sync_due(hub, now):
                try:
                    await service.sync_devices(
                        sessions=self.sessions, clients=self.clients, tenant_id=tenant_id, hub_id=hub_id
                    )
                except FleetliftError as error:
                    # Recorded on the hub (last_sync); the log hears of it once.
                    self._say_once((hub_id, "sync"), "iothub sync failed for hub %s: %s", error.detail)
                else:
                    self._said.pop((hub_id, "sync"), None)
            await service.reconcile_hub(
                sessions=self.sessions,
                clients=self.clients,
                tenant_id=tenant_id,
                hub_id=hub_id,
                status_interval=self.status_interval if status_interval is None else status_interval,
                max_configurations=self.max_configurations,
            )
        finally:
            await anyio.to_thread.run_sync(self._release, tenant_id, hub_id)
        return True

    async def run_once(self, *, status_interval: float | None = None) -> int:
        """One pass over every hub; how many hubs it worked on. ``status_interval=0`` reads every status."""
        loop = asyncio.get_running_loop()
        lock = self._pass_locks.get(loop)
        if lock is None:
            lock = self._pass_locks[loop] = asyncio.Lock()
        async with lock:
            done = 0
            for tenant_id, hub_id in await anyio.to_thread.run_sync(self._hubs):
                try:
                    done += await self.run_hub(tenant_id, hub_id, status_interval=status_interval)
                except FleetliftError as error:
                    self._say_once((hub_id, "pass"), "iothub pass failed for hub %s: %s", error.detail)
                except Exception:
                    # One hub's failure must not stop the others.
                    log.exception("iothub pass failed for hub %s", hub_id)
                else:
                    self._said.pop((hub_id, "pass"), None)
            self.passes += 1
            return done

    async def run(self) -> None:
        """Pass after pass until ``stop``."""
        loop = asyncio.get_running_loop()
        stop = self._stops[loop] = asyncio.Event()
        try:
            while not stop.is_set():
                try:
                    await self.run_once()
                except Exception:
                    log.exception("iothub worker pass failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.interval)
        finally:
            if self._stops.get(loop) is stop:
                del self._stops[loop]

    def stop(self) -> None:
        """End the loop of the calling event loop (every loop's, called outside one) after the
        pass under way."""
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, event in list(self._stops.items()):
            if current is None:
                with contextlib.suppress(RuntimeError):  # that loop closed meanwhile
                    loop.call_soon_threadsafe(event.set)
            elif loop is current:
                event.set()
