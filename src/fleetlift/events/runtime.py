"""What the events slice runs in a server process: the hub that wakes live readers after commits,
the webhook dispatcher, and the shutdown watch that ends event streams."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import httpx
from sqlalchemy.orm import Session, sessionmaker

from fleetlift.config import Settings
from fleetlift.events.dispatcher import WebhookDispatcher
from fleetlift.events.stream import EventHub, install_session_hooks, watch_shutdown_signals
from fleetlift.secrets_box import SecretBox


class EventsRuntime:
    """Built in ``create_app``; ``start`` and ``stop`` in the app's lifespan."""

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
        self.dispatcher = WebhookDispatcher(
            sessions=sessions, box=box, hub=self.hub, settings=settings, transport=transport
        )
        self.enabled = settings.webhooks_enabled
        self._task: asyncio.Task[None] | None = None
        self._restore_signals: Callable[[], None] = lambda: None

    async def start(self) -> None:
        self.hub.closed = False  # an app may be started again after a stop (tests do)
        self.dispatcher.stopping = False
        self._restore_signals = watch_shutdown_signals(self.hub)
        if self.enabled:
            self._task = asyncio.create_task(self.dispatcher.run())

    async def stop(self) -> None:
        self.hub.close()
        self._restore_signals()
        if self._task is not None:
            self.dispatcher.stop()
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout=5)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
