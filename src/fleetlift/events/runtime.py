"""What the events slice runs in a server process: the hub that wakes live readers after commits,
the webhook dispatcher, and the shutdown watch that ends event streams."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import httpx
from sqlalchemy.orm import Session, sessionmaker

from fleetlift.config import Settings
from fleetlift.events.dispatcher import WebhookDispatcher
from fleetlift.events.retention import EventPruner
from fleetlift.events.stream import EventHub, install_session_hooks, watch_shutdown_signals
from fleetlift.secrets_box import SecretBox


@dataclass
class Running:
    """One lifespan's share: its dispatcher (bound to that lifespan's event loop) and signal watch."""

    dispatcher: WebhookDispatcher | None
    task: asyncio.Task[None] | None
    restore_signals: Callable[[], None]
    pruner: asyncio.Task[None] | None = None


class EventsRuntime:
    """Built in ``create_app``; ``start`` and ``stop`` in the app's lifespan. A lifespan may run
    more than once, even nested on other event loops (test clients do): each gets its own
    dispatcher; the hub closes (ending streams) when the last one stops."""

    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        box: SecretBox,
        settings: Settings,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.hub = EventHub()
        install_session_hooks(sessions, self.hub)
        self.sessions = sessions
        self.box = box
        self.settings = settings
        self.transport = transport
        self._lock = threading.Lock()
        self._running = 0

    async def start(self) -> Running:
        with self._lock:
            self._running += 1
            self.hub.closed = False
        restore = watch_shutdown_signals(self.hub)
        pruner = None
        if self.settings.events_retention_days > 0:
            pruning = EventPruner(
                sessions=self.sessions,
                retention=timedelta(days=self.settings.events_retention_days),
                interval=self.settings.events_prune_interval_seconds,
            )
            pruner = asyncio.create_task(pruning.run())
        if not self.settings.webhooks_enabled:
            return Running(None, None, restore, pruner)
        dispatcher = WebhookDispatcher(
            sessions=self.sessions,
            box=self.box,
            hub=self.hub,
            settings=self.settings,
            transport=self.transport,
        )
        return Running(dispatcher, asyncio.create_task(dispatcher.run()), restore, pruner)

    async def stop(self, running: Running) -> None:
        with self._lock:
            self._running -= 1
            last = self._running <= 0
        if last:
            self.hub.close()
        running.restore_signals()
        if running.pruner is not None:
            running.pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running.pruner
        if running.dispatcher is None or running.task is None:
            return
        running.dispatcher.stop()
        try:
            await asyncio.wait_for(asyncio.shield(running.task), timeout=5)
        except TimeoutError:
            running.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running.task
