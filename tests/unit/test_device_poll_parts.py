"""The pure parts of the device poll's hot path, and the notifier that wakes long polls."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from fleetlift.device_api.poll import PollNotifier, SeenRecorder
from fleetlift.device_api.rules import etag_matches, poll_etag, seen_is_stale, token_refusal

NOW = datetime(2026, 11, 24, 9, 0, 0, tzinfo=UTC)


def test_token_refusal() -> None:
    issued = NOW - timedelta(minutes=5)
    assert token_refusal("accepted", None, issued) is None
    assert token_refusal("accepted", NOW - timedelta(hours=1), issued) is None
    assert token_refusal("accepted", NOW, issued) == "the device token was revoked; authenticate again"
    # token times have whole seconds: a token issued in the second of the revocation still counts
    assert token_refusal("accepted", issued.replace(microsecond=500_000), issued) is None
    for status in ("pending", "rejected", "decommissioned", None):
        assert token_refusal(status, None, issued) == "the device is no longer admitted"


def test_seen_is_stale() -> None:
    minute = timedelta(minutes=1)
    assert seen_is_stale(None, NOW, minute)
    assert not seen_is_stale(NOW - timedelta(seconds=59), NOW, minute)
    assert seen_is_stale(NOW - minute, NOW, minute)


def test_etags() -> None:
    etag = poll_etag("dep_1", "rel_1", 1)
    assert etag.startswith('"') and len(etag) == 34
    assert etag != poll_etag("dep_1", "rel_1", 2) != poll_etag("dep_2", "rel_1", 1)
    assert etag_matches(f'"a", {etag}', etag)
    assert not etag_matches(None, etag) and not etag_matches('"a"', etag)


def test_seen_recorder_keeps_the_latest_time_per_device() -> None:
    seen = SeenRecorder(timedelta(seconds=60))
    assert seen.note("t", "a", NOW) == 1
    assert seen.note("t", "a", NOW + timedelta(seconds=1)) == 1
    assert seen.note("t", "b", NOW) == 2
    taken = sorted(seen.take())
    assert taken[0] == ("t", "a", NOW + timedelta(seconds=1), NOW - timedelta(seconds=59))
    assert len(taken) == 2 and len(seen) == 0


def test_notifier_wakes_waiters_of_the_tenant_from_another_thread() -> None:
    notifier = PollNotifier()

    async def scenario() -> tuple[bool, bool, float]:
        since = notifier.generation("t")
        other = asyncio.create_task(notifier.wait("u", notifier.generation("u"), 0.3))
        waiting = asyncio.create_task(notifier.wait("t", since, 10))
        while notifier.waiting() < 2:
            await asyncio.sleep(0.001)
        started = time.monotonic()
        threading.Thread(target=notifier.signal, args=(["t"],)).start()
        woken = await waiting
        elapsed = time.monotonic() - started
        return woken, await other, elapsed

    woken, other_woken, elapsed = asyncio.run(scenario())
    assert woken and elapsed < 0.5
    assert not other_woken  # another tenant's change wakes nobody here: it timed out
    assert notifier.waiting() == 0


def test_a_change_between_the_check_and_the_wait_is_not_missed() -> None:
    notifier = PollNotifier()

    async def scenario() -> tuple[bool, float]:
        since = notifier.generation("t")  # read before the database check ...
        notifier.signal(["t"])  # ... a deployment is committed meanwhile ...
        started = time.monotonic()
        woken = await notifier.wait("t", since, 10)  # ... so the wait returns at once
        return woken, time.monotonic() - started

    woken, elapsed = asyncio.run(scenario())
    assert woken and elapsed < 0.1


def test_the_request_guard_measures_and_names_bodiless_requests_with_the_access_log_off() -> None:
    """The guard's short road for requests without a body: the caller's request ID is kept (the
    last one when repeated), a bad one replaced, and every answer counted, with INFO off too."""
    import logging

    from prometheus_client import CollectorRegistry

    from fleetlift.api.middleware import RequestGuard, RequestMetrics, access_log

    registry = CollectorRegistry()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    guard = RequestGuard(app, max_body_bytes=100, metrics=RequestMetrics(registry), json_prefix="/api/v1")

    def call(headers: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
        sent: list[dict[str, Any]] = []

        async def send(message: Any) -> None:
            sent.append(message)

        async def receive() -> Any:
            return {"type": "http.request", "body": b"", "more_body": False}

        scope = {"type": "http", "method": "GET", "path": "/x", "headers": headers, "query_string": b""}
        asyncio.run(guard(scope, receive, send))
        return dict(sent[0]["headers"])

    level = access_log.level
    access_log.setLevel(logging.WARNING)
    try:
        assert call([(b"x-request-id", b"first"), (b"X-Request-ID", b"abc-1")])[b"x-request-id"] == b"abc-1"
        assert call([(b"x-request-id", b"bad id!")])[b"x-request-id"].startswith(b"req_")
        assert call([])[b"x-request-id"].startswith(b"req_")
    finally:
        access_log.setLevel(level)
    labels = {"method": "GET", "route": "unmatched", "status": "204"}
    assert registry.get_sample_value("fleetlift_http_requests_total", labels) == 3
    count = {"method": "GET", "route": "unmatched"}
    assert registry.get_sample_value("fleetlift_http_request_duration_seconds_count", count) == 3
