"""Device status reports recorded in batches (group commit).

A wave of 10,000 devices sends three or four reports each within minutes. Recorded one by one,
each is a transaction of its own (read the row, update it, insert its event, commit), and the
database's commits, not the devices, set the pace (docs/benchmarks.md, "Rollouts"). Here the
reports that arrive while a batch is being written wait together and become the next batch:
one transaction, one statement to read and lock their rows, one to change them, one to write
their events (``deployments.service.record_device_reports``). An idle server writes a lone report
at once; a busy one writes hundreds per commit. Each report still gets its own answer: the
state it led to, or the error that refused it.

The poll's own write (``pending`` becomes ``notified`` when a device is first told) goes the same
way, so the first poll of a whole wave is not a transaction per device either.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio
from sqlalchemy.orm import Session, sessionmaker

from fleetlift.db import utcnow
from fleetlift.deployments import service as deployments
from fleetlift.deployments.rules import TERMINAL, DeviceReport, DeviceUpdateState
from fleetlift.device_api.rules import token_refusal
from fleetlift.errors import FleetliftError

log = logging.getLogger(__name__)

MAX_BATCH = 500  # reports per transaction: bounds the statement sizes and the time rows stay locked
# How long the first report of a batch waits for others. A transaction's fixed cost (begin, four
# statements, commit) is most of a small batch's; devices do not notice 20 ms on a report.
LINGER_SECONDS = 0.02

Outcome = DeviceUpdateState | FleetliftError


@dataclass
class _Queue:
    """The reports of one event loop waiting for the next batch."""

    waiting: list[tuple[DeviceReport, asyncio.Future[Outcome]]] = field(default_factory=list)
    writer: asyncio.Task[None] | None = None


class ReportBatcher:
    """Records device reports in batches; ``record`` is awaited by each request."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        max_batch: int = MAX_BATCH,
        linger: float = LINGER_SECONDS,
        on_outcomes: Callable[[], None] | None = None,
    ) -> None:
        self.sessions = sessions
        self.max_batch = max_batch
        self.linger = linger
        # Called after a batch that recorded an outcome (a freed slot, a wave that may be done).
        self.on_outcomes = on_outcomes
        self.batches = 0
        self.recorded = 0
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Queue] = (
            weakref.WeakKeyDictionary()
        )

    async def record(self, report: DeviceReport) -> DeviceUpdateState:
        """Record one report with whichever others arrive meanwhile; its state after it, or its
        own error raised (a database failure is raised to every report of the batch)."""
        loop = asyncio.get_running_loop()
        queue = self._queues.get(loop)
        if queue is None:
            queue = self._queues[loop] = _Queue()
        answer: asyncio.Future[Outcome] = loop.create_future()
        queue.waiting.append((report, answer))
        if queue.writer is None or queue.writer.done():
            queue.writer = loop.create_task(self._write(queue))
        outcome = await answer
        if isinstance(outcome, FleetliftError):
            raise outcome
        return outcome

    async def _write(self, queue: _Queue) -> None:
        """Write batches until nobody waits: reports that arrive during a write form the next one."""
        while queue.waiting:
            if self.linger > 0 and len(queue.waiting) < self.max_batch:
                await asyncio.sleep(self.linger)
            batch, queue.waiting = queue.waiting[: self.max_batch], queue.waiting[self.max_batch :]
            reports = [report for report, _ in batch]
            try:
                outcomes = await anyio.to_thread.run_sync(self.write, reports)
            except Exception as error:  # the database failed: every report of the batch hears it
                for _, answer in batch:
                    if not answer.done():
                        answer.set_exception(error)
                continue
            for (_, answer), outcome in zip(batch, outcomes, strict=True):
                if not answer.done():  # a request that went away does not need its answer
                    answer.set_result(outcome)

    def write(self, reports: Sequence[DeviceReport]) -> list[Outcome]:
        """One batch in one transaction (on a worker thread)."""
        with self.sessions() as session:
            try:
                outcomes = deployments.record_device_reports(
                    session=session, reports=reports, now=utcnow(), refusal=token_refusal
                )
            except BaseException:
                session.rollback()
                raise
        self.batches += 1
        self.recorded += len(reports)
        if self.on_outcomes is not None and any(outcome in TERMINAL for outcome in outcomes):
            try:
                self.on_outcomes()
            except Exception:
                log.exception("could not wake the reconciler")
        return outcomes
