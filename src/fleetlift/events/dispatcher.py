"""The webhook dispatcher: fans events out to subscriptions and POSTs them, signed, with retries.

One background task per server process (several replicas may run it on one PostgreSQL):

1. **Fan-out.** Each subscription keeps a cursor (the highest event seq it has considered). Its
   deliveries are created with one ``INSERT ... SELECT`` of the matching events after the cursor
   (a bounded batch), and the cursor moves in the same transaction. PostgreSQL: subscriptions are
   locked ``FOR UPDATE SKIP LOCKED``, so one replica moves a cursor at a time; SQLite: the write
   lock is taken first. A delivery's ID is made of its event and subscription, so one event cannot
   be fanned out twice to one subscription.
2. **Claim.** Due deliveries are claimed with one ``UPDATE ... RETURNING`` that counts the attempt
   and pushes the next attempt out by a lease (PostgreSQL: ``SKIP LOCKED``), so each delivery is
   attempted by one replica at a time; a replica that dies mid-attempt leaves it to be retried
   when the lease ends. At most ``webhook_concurrency`` deliveries per subscription are in flight
   in one replica.
3. **Attempt.** ``POST`` with httpx; a 2xx answer delivers, anything else (another status, a
   timeout, a connection error) schedules a retry after a full-jitter exponential backoff, until
   ``webhook_max_attempts`` attempts have failed (then ``failed``).

Deliveries of one subscription are not ordered: a retried event may arrive after later ones.
Receivers order by ``seq`` and deduplicate by the delivery ID (a lease that ran out, or a receiver
that answered too late, can repeat a delivery: at least once).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

import anyio
import httpx
from sqlalchemy.orm import Session, sessionmaker

from fleetlift.config import Settings
from fleetlift.db import transaction, utcnow
from fleetlift.events import repository
from fleetlift.events.rules import backoff_delay, settled_horizon, signature, truncate_error
from fleetlift.events.stream import ANY, EventHub, event_json
from fleetlift.secrets_box import SecretBox

log = logging.getLogger(__name__)

FAN_OUT_BATCH = 1000  # deliveries created per subscription per pass
SCAN = 5000  # event numbers checked for gaps per subscription per pass
LEASE_MARGIN_SECONDS = 60.0
SUBSCRIPTIONS_PER_PASS = 100


def secret_context(tenant_id: str, subscription_id: str) -> str:
    """What a subscription's sealed secret is bound to (a ciphertext copied to another row fails)."""
    return f"webhook-secret/{tenant_id}/{subscription_id}"


@dataclass(frozen=True)
class Job:
    """One claimed attempt, with everything it needs outside the database."""

    tenant_id: str
    subscription_id: str
    delivery_id: str
    attempt: int
    event_type: str
    url: str
    secret: str
    body: bytes


def _redact(text: str, url: str) -> str:
    """An error message without the receiver's URL (it may carry credentials or tokens)."""
    parts = urlsplit(url)
    return text.replace(url, f"{parts.scheme}://{parts.hostname or ''}/…")


class WebhookDispatcher:
    """Runs fan-out, claims and attempts until stopped; see the module docstring."""

    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        box: SecretBox,
        hub: EventHub,
        settings: Settings,
        transport: httpx.AsyncBaseTransport | None = None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.sessions = sessions
        self.box = box
        self.hub = hub
        self.timeout = settings.webhook_timeout_seconds
        self.max_attempts = settings.webhook_max_attempts
        self.backoff_base = settings.webhook_backoff_base_seconds
        self.backoff_max = settings.webhook_backoff_max_seconds
        self.concurrency = settings.webhook_concurrency
        self.poll_interval = settings.webhook_poll_interval_seconds
        self.gap_timeout = settings.events_gap_timeout_seconds
        self.transport = transport
        self.jitter = jitter
        self._first_seen: dict[int, float] = {}
        self._settled = 0
        self._in_flight: dict[tuple[str, str], int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.stopping = False
        self._client: httpx.AsyncClient | None = None

    async def run(self) -> None:
        """Dispatch until ``stop``; a failing pass (database away) is logged and tried again."""
        self._client = httpx.AsyncClient(
            timeout=self.timeout, follow_redirects=False, transport=self.transport, trust_env=False
        )
        failing_since: float | None = None
        last_report = 0.0
        try:
            while not self.stopping:
                generation = self.hub.generation(ANY)
                busy = False
                try:
                    busy = await self.pass_once()
                    if failing_since is not None:
                        log.warning("webhook dispatch works again")
                        failing_since = None
                except Exception:
                    # An outage (the database away) is logged when it starts, then once a minute.
                    now = time.monotonic()
                    if failing_since is None or now - last_report >= 60:
                        log.exception("webhook dispatch pass failed; trying again every pass")
                        last_report = now
                    failing_since = failing_since or now
                if busy or self.stopping:
                    continue
                if self.hub.closed:  # streams are over; keep dispatching until stopped
                    await asyncio.sleep(self.poll_interval)
                else:
                    await self.hub.wait(ANY, generation, self.poll_interval)
        finally:
            await self._drain()
            await self._client.aclose()

    def stop(self) -> None:
        self.stopping = True
        self.hub.signal(())

    async def _drain(self, grace: float = 2.0) -> None:
        """Let attempts in flight finish briefly; the rest are cancelled (their leases run out and
        another replica, or this one after a restart, tries again)."""
        if not self._tasks:
            return
        _done, pending = await asyncio.wait(self._tasks, timeout=grace)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def pass_once(self) -> bool:
        """One round of fan-out and claims; True when there may be more to do at once."""
        more = await anyio.to_thread.run_sync(self.fan_out)
        jobs = await anyio.to_thread.run_sync(self.claim, dict(self._in_flight))
        for job in jobs:
            key = (job.tenant_id, job.subscription_id)
            self._in_flight[key] = self._in_flight.get(key, 0) + 1
            task = asyncio.create_task(self._attempt(job))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return more > 0

    def fan_out(self) -> int:
        """Create deliveries for subscriptions behind the log; how many were created (or, when
        more subscriptions wait than one pass takes, at least 1: go on at once)."""
        with self.sessions() as session:
            if not repository.subscriptions_behind(session):
                return 0
        created = 0
        with transaction(self.sessions) as session:
            now = utcnow()
            locked = repository.lock_active_subscriptions(session, limit=SUBSCRIPTIONS_PER_PASS)
            if len(locked) == SUBSCRIPTIONS_PER_PASS:
                created += 1
            for subscription in locked:
                # Numbers up to ``_settled`` are there or given up (a cursor left below it by a
                # full batch does not wait out the same gap again).
                start = max(subscription.cursor_seq, self._settled)
                seqs = repository.seqs_after(session, after=start, limit=SCAN)
                horizon = settled_horizon(start, seqs, self._first_seen, time.monotonic(), self.gap_timeout)
                self._settled = max(self._settled, horizon)
                created += repository.fan_out(
                    session, subscription=subscription, through=horizon, batch=FAN_OUT_BATCH, now=now
                )
        return created

    def claim(self, in_flight: dict[tuple[str, str], int]) -> list[Job]:
        """Claim due deliveries, at most ``concurrency`` in flight per subscription."""
        now = utcnow()
        lease_until = now + timedelta(seconds=self.timeout + LEASE_MARGIN_SECONDS)
        with transaction(self.sessions) as session:
            claimed: list[tuple[str, str, str, int, int]] = []
            for tenant_id, subscription_id in repository.due_subscriptions(session, now=now, limit=200):
                free = self.concurrency - in_flight.get((tenant_id, subscription_id), 0)
                if free <= 0:
                    continue
                for delivery, seq, attempt in repository.claim_deliveries(
                    session,
                    tenant_id=tenant_id,
                    subscription_id=subscription_id,
                    now=now,
                    lease_until=lease_until,
                    limit=free,
                ):
                    claimed.append((tenant_id, subscription_id, delivery, seq, attempt))
            if not claimed:
                return []
            events = repository.events_by_seq(session, {seq for *_, seq, _ in claimed})
            subscriptions = {
                key: repository.get_subscription(session, tenant_id=key[0], subscription_id=key[1])
                for key in {(tenant, sub) for tenant, sub, *_ in claimed}
            }
            jobs = []
            for tenant_id, subscription_id, delivery, seq, attempt in claimed:
                subscription = subscriptions[(tenant_id, subscription_id)]
                event = events.get(seq)
                problem = None
                if subscription is None or event is None:
                    problem = "the webhook or the event is gone"
                else:
                    try:
                        secret = self.box.open(
                            subscription.secret_encrypted, context=secret_context(tenant_id, subscription_id)
                        )
                    except ValueError:
                        problem = "the webhook's secret cannot be opened with this server's secrets key"
                if problem is not None or subscription is None or event is None:
                    # Nothing a retry would fix: fail it now instead of failing every pass.
                    log.error("webhook delivery %s: %s", delivery, problem)
                    repository.record_attempt(
                        session,
                        tenant_id=tenant_id,
                        delivery=delivery,
                        attempt=attempt,
                        status="failed",
                        status_code=None,
                        error=problem,
                        next_attempt_at=None,
                        delivered_at=None,
                    )
                    continue
                payload = {"id": delivery, "tenant_id": tenant_id, **event_json(event)}
                jobs.append(
                    Job(
                        tenant_id=tenant_id,
                        subscription_id=subscription_id,
                        delivery_id=delivery,
                        attempt=attempt,
                        event_type=event.type,
                        url=subscription.url,
                        secret=secret,
                        body=json.dumps(payload, separators=(",", ":"), default=str).encode(),
                    )
                )
            return jobs

    async def _attempt(self, job: Job) -> None:
        try:
            await self.attempt(job)
        except Exception:
            log.exception("webhook delivery %s: recording the attempt failed", job.delivery_id)
        finally:
            key = (job.tenant_id, job.subscription_id)
            self._in_flight[key] -= 1
            if self._in_flight[key] <= 0:
                del self._in_flight[key]

    async def attempt(self, job: Job) -> None:
        """POST one delivery and record how it went."""
        assert self._client is not None
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "fleetlift-webhooks/1",
            "X-Fleetlift-Event": job.event_type,
            "X-Fleetlift-Delivery": job.delivery_id,
            "X-Fleetlift-Timestamp": timestamp,
            "X-Fleetlift-Signature": signature(job.secret, timestamp, job.body),
        }
        status_code: int | None = None
        error: str | None = None
        try:
            async with self._client.stream("POST", job.url, content=job.body, headers=headers) as response:
                status_code = response.status_code  # the body is not read: receivers answer what they like
        except httpx.TimeoutException:
            error = f"timed out after {self.timeout:g} s"
        except httpx.HTTPError as failure:
            error = truncate_error(_redact(f"{type(failure).__name__}: {failure}", job.url))
        now = utcnow()
        if status_code is not None and 200 <= status_code < 300:
            outcome, next_at, delivered_at, error = "delivered", None, now, None
        else:
            error = error or f"HTTP {status_code}"
            delivered_at = None
            if job.attempt >= self.max_attempts:
                outcome, next_at = "failed", None
            else:
                delay = backoff_delay(
                    job.attempt, base=self.backoff_base, cap=self.backoff_max, random=self.jitter
                )
                outcome, next_at = "pending", now + timedelta(seconds=delay)
        log.info(
            "webhook delivery %s (%s, attempt %d): %s",
            job.delivery_id,
            job.event_type,
            job.attempt,
            outcome if status_code is None else f"{outcome}, HTTP {status_code}",
            extra={"delivery_id": job.delivery_id, "subscription_id": job.subscription_id},
        )

        def record() -> None:
            with transaction(self.sessions) as session:
                repository.record_attempt(
                    session,
                    tenant_id=job.tenant_id,
                    delivery=job.delivery_id,
                    attempt=job.attempt,
                    status=outcome,
                    status_code=status_code,
                    error=error,
                    next_attempt_at=next_at,
                    delivered_at=delivered_at,
                )

        await anyio.to_thread.run_sync(record)
