"""Live events: a hub that wakes readers of this process right after a commit that emitted events,
and the Server-Sent Events stream of ``GET /api/v1/events``.

Readers also re-check the database every ``recheck_seconds``, so events committed by other
processes (replicas, the CLI) arrive too, a second later at most.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker
from starlette.requests import Request

from fleetlift.events import repository
from fleetlift.events.models import Event
from fleetlift.events.rules import settled_horizon
from fleetlift.wakeups import Wakeups

ANY = "*"  # waiters on every tenant (the webhook dispatcher)
KEEPALIVE_SECONDS = 15.0
RECHECK_SECONDS = 1.0
SCAN = 1000  # event numbers checked for gaps per read
PAGE = 500  # events sent per read


class EventHub(Wakeups):
    """Wakes event readers of this process: per-tenant generations, bumped after each commit that
    emitted events of the tenant (and ``ANY``, for the dispatcher). ``close`` ends every stream
    (server shutdown)."""

    def signal(self, tenant_ids: Iterable[str]) -> None:
        """Events of these tenants were committed: wake their readers (and the dispatcher)."""
        self.wake([*tenant_ids, ANY])


def install_session_hooks(sessions: sessionmaker[Session], hub: EventHub) -> None:
    """Signal ``hub`` after every commit of a session that emitted events."""

    def committed(session: Session) -> None:
        tenants = session.info.pop(repository.EMITTED_TENANTS, None)
        if session.info.pop(repository.EMITTED, None) or tenants:
            hub.signal(tenants or ())

    def rolled_back(session: Session, *_args: Any) -> None:
        session.info.pop(repository.EMITTED_TENANTS, None)
        session.info.pop(repository.EMITTED, None)

    event.listen(sessions, "after_commit", committed)
    event.listen(sessions, "after_soft_rollback", rolled_back)


def watch_shutdown_signals(hub: EventHub) -> Callable[[], None]:
    """Close ``hub`` when the server is told to stop (SIGINT, SIGTERM), before the server waits for
    open connections to finish: otherwise a stream, which never finishes, would hold shutdown up.
    Chains to the handler in place (uvicorn's). Returns a function that restores it. Only the main
    thread can handle signals; elsewhere (tests) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        loop.call_soon_threadsafe(hub.close)
        chained = previous.get(signum)
        if callable(chained):
            chained(signum, frame)

    for signum in (signal.SIGINT, signal.SIGTERM):
        current = signal.getsignal(signum)
        if callable(current):  # someone (uvicorn) handles it: close the streams first, then go on
            previous[signum] = current
            signal.signal(signum, handler)

    def restore() -> None:
        for signum, original in previous.items():
            if signal.getsignal(signum) is handler:
                signal.signal(signum, original)

    return restore


def event_json(row: Event) -> dict[str, Any]:
    """An event as the API and the stream answer it."""
    return {
        "seq": row.seq,
        "type": row.type,
        "deployment_id": row.deployment_id,
        "device_id": row.device_id,
        "data": row.data,
        "created_at": row.created_at.isoformat().replace("+00:00", "Z"),
    }


def frame(row: Event) -> bytes:
    """One Server-Sent Event: its seq as the id (what ``Last-Event-ID`` resumes after)."""
    data = json.dumps(event_json(row), separators=(",", ":"), default=str)
    return f"id: {row.seq}\nevent: {row.type}\ndata: {data}\n\n".encode()


@dataclass
class StreamQuery:
    """What one stream follows."""

    tenant_id: str
    after: int | None
    type_prefixes: Sequence[str] = ()
    deployment_id: str | None = None
    device_id: str | None = None


class _Reader:
    """Reads a tenant's events in seq order, never past a number that may still appear."""

    def __init__(self, sessions: sessionmaker[Session], query: StreamQuery, gap_timeout: float) -> None:
        self.sessions = sessions
        self.query = query
        self.gap_timeout = gap_timeout
        self.position = -1
        self.settled = -1
        self.first_seen: dict[int, float] = {}

    def start(self) -> None:
        with self.sessions() as session:
            self.position = self.query.after if self.query.after is not None else repository.max_seq(session)

    def read(self) -> tuple[Sequence[Event], bool]:
        """The next events (and whether more wait), moving the position past what was checked."""
        with self.sessions() as session:
            # Up to ``settled`` every number is known to be there or given up: check only after it.
            start = max(self.position, self.settled)
            seqs = repository.seqs_after(session, after=start, limit=SCAN)
            horizon = settled_horizon(start, seqs, self.first_seen, time.monotonic(), self.gap_timeout)
            self.settled = horizon
            if horizon <= self.position:
                return (), False
            rows = repository.list_events(
                session,
                tenant_id=self.query.tenant_id,
                after=self.position,
                through=horizon,
                type_prefixes=self.query.type_prefixes,
                deployment_id=self.query.deployment_id,
                device_id=self.query.device_id,
                limit=PAGE,
            )
        if len(rows) == PAGE:
            self.position = rows[-1].seq
            return rows, True
        self.position = horizon
        return rows, len(seqs) == SCAN and horizon == seqs[-1]


async def sse_stream(
    request: Request,
    *,
    sessions: sessionmaker[Session],
    hub: EventHub,
    query: StreamQuery,
    gap_timeout: float,
    recheck_seconds: float | None = None,
    keepalive_seconds: float | None = None,
) -> AsyncIterator[bytes]:
    """The body of an event stream: events as they commit, a keep-alive comment when idle; ends on
    client disconnect (Starlette cancels it) and when the hub closes (server shutdown)."""
    recheck_seconds = recheck_seconds or RECHECK_SECONDS
    keepalive_seconds = keepalive_seconds or KEEPALIVE_SECONDS
    reader = _Reader(sessions, query, gap_timeout)
    await anyio.to_thread.run_sync(reader.start)
    yield b"retry: 2000\n: connected\n\n"
    last_write = time.monotonic()
    while not hub.closed:
        generation = hub.generation(query.tenant_id)
        rows, more = await anyio.to_thread.run_sync(reader.read)
        if rows:
            yield b"".join(frame(row) for row in rows)
            last_write = time.monotonic()
        if more:
            continue
        if await request.is_disconnected():
            return
        idle = time.monotonic() - last_write
        if idle >= keepalive_seconds:
            yield b": keep-alive\n\n"
            last_write = time.monotonic()
            idle = 0.0
        await hub.wait(query.tenant_id, generation, min(recheck_seconds, keepalive_seconds - idle))
