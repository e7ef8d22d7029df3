"""Event retention: events older than ``events_retention_days`` are deleted, in pages, on a timer.

Every replica may run it: the deletes are idempotent, and a page is a bounded transaction."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import anyio
from sqlalchemy.orm import Session, sessionmaker

from fleetlift.db import utcnow
from fleetlift.events import repository

log = logging.getLogger(__name__)

PAGE = 10_000


class EventPruner:
    """Deletes expired events (``prune``) and does so every ``interval`` seconds (``run``)."""

    def __init__(
        self, *, sessions: sessionmaker[Session], retention: timedelta, interval: float, page: int = PAGE
    ) -> None:
        self.sessions = sessions
        self.retention = retention
        self.interval = interval
        self.page = page

    def prune(self, now: datetime | None = None) -> int:
        """Delete every expired event now, page by page; how many."""
        before = (now or utcnow()) - self.retention
        deleted = 0
        while True:
            with self.sessions() as session:
                count = repository.prune(session, before=before, limit=self.page)
                session.commit()
            deleted += count
            if count < self.page:
                return deleted

    async def run(self) -> None:
        """Prune every ``interval`` seconds until cancelled."""
        while True:
            try:
                deleted = await anyio.to_thread.run_sync(self.prune)
                if deleted:
                    log.info("deleted %d expired events", deleted)
            except Exception:  # the database may be briefly unavailable: next time
                log.exception("could not delete expired events")
            await anyio.sleep(self.interval)
