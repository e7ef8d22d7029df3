"""The webhook dispatcher against real databases and a real HTTP receiver on 127.0.0.1: signed
deliveries, retries with backoff, receivers that stay down, filters, pings, event-number gaps, and
two dispatchers on one database delivering each event exactly once."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, select, update
from sqlalchemy.orm import Session, sessionmaker

from fleetlift.auth import Role
from fleetlift.config import Settings
from fleetlift.context import Caller
from fleetlift.db import make_engine, make_session_factory, transaction, utcnow
from fleetlift.events import dispatcher as dispatcher_module
from fleetlift.events import repository, service
from fleetlift.events.dispatcher import WebhookDispatcher
from fleetlift.events.models import WebhookDelivery, WebhookSubscription
from fleetlift.events.schemas import WebhookCreate
from fleetlift.events.stream import EventHub, install_session_hooks
from fleetlift.migrate import upgrade
from fleetlift.secrets_box import SecretBox
from fleetlift.tenants import repository as tenants

from ..conftest import migrated_schema
from ..fleetlift_logs import capture_fleetlift_logs

SECRET = "whsec_test-secret-0123456789abcdef"


# -- a real receiver ---------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)  # type: ignore[no-any-return]


@dataclass
class Receiver:
    """Records every POST; answers each path from its script (status codes, or a delay first)."""

    url: str
    requests: list[Received] = field(default_factory=list)
    script: dict[str, list[int]] = field(default_factory=dict)
    delay: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.path == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            me = state["receiver"]
            with me.lock:
                me.requests.append(Received(self.path, dict(self.headers.items()), body, time.monotonic()))
                planned = me.script.get(self.path)
                status = planned.pop(0) if planned else 200
            time.sleep(me.delay.get(self.path, 0.0))
            try:
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
            except OSError:
                pass  # the dispatcher gave up waiting (a timeout test)

        def log_message(self, *_args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        request_queue_size = 128  # several dispatchers connect at once

    server = Server(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state["receiver"] = Receiver(url=f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state["receiver"]
    server.shutdown()
    server.server_close()


# -- databases ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_migrated(pg_url: str) -> Iterator[str]:
    """A schema of this module's own: the session's shared one is also served by the API tests'
    app, whose dispatcher (with another secrets key) would take these tests' deliveries."""
    with migrated_schema("wh") as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'fleetlift.db'}"
        upgrade(url)
        return url
    return str(request.getfixturevalue("pg_migrated"))


def small_engine(url: str) -> Engine:
    """Few connections: PostgreSQL's 100 are shared with every other test run on the machine."""
    if url.startswith("sqlite"):
        return make_engine(url)
    return create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=6)


@dataclass
class World:
    """One tenant on one database, with what a dispatcher needs."""

    url: str
    sessions: sessionmaker[Session]
    tenant: str
    box: SecretBox
    settings: Settings
    hub: EventHub

    @property
    def caller(self) -> Caller:
        return Caller.of(
            subject="admin", roles=frozenset({Role.ADMIN}), tenant_id=self.tenant, request_id="req_t"
        )

    def subscribe(self, url: str, *, event_types: list[str] | None = None, secret: str = SECRET) -> str:
        with self.sessions() as session:
            data = WebhookCreate.model_validate(
                {"url": url, "event_types": event_types or [], "secret": secret}
            )
            row, _ = service.create_webhook(session=session, box=self.box, caller=self.caller, data=data)
            return row.id

    def emit(self, type: str, count: int = 1, **fields: Any) -> list[int]:
        with transaction(self.sessions) as session:
            return [
                repository.emit(
                    session, tenant_id=self.tenant, type=type, now=utcnow(), data={"n": n}, **fields
                )
                for n in range(count)
            ]

    def deliveries(self, subscription_id: str) -> list[WebhookDelivery]:
        with self.sessions() as session:
            return list(
                session.scalars(
                    select(WebhookDelivery)
                    .where(
                        WebhookDelivery.tenant_id == self.tenant,
                        WebhookDelivery.subscription_id == subscription_id,
                    )
                    .order_by(WebhookDelivery.event_seq)
                ).all()
            )

    def dispatcher(
        self, sessions: sessionmaker[Session] | None = None, **overrides: Any
    ) -> WebhookDispatcher:
        settings = self.settings.model_copy(update=overrides)
        return WebhookDispatcher(
            sessions=sessions or self.sessions,
            box=self.box,
            hub=self.hub,
            settings=settings,
            jitter=lambda: 1.0,
        )


@pytest.fixture
def world(database: str, tmp_path: Path) -> Iterator[World]:
    engine = small_engine(database)
    sessions = make_session_factory(engine)
    hub = EventHub()
    install_session_hooks(sessions, hub)
    tenant = f"t-{uuid.uuid4().hex[:12]}"
    with transaction(sessions) as session:
        tenants.ensure(session, tenant_id=tenant, name=tenant)
    settings = Settings(
        data_dir=tmp_path,
        webhook_backoff_base_seconds=0.2,
        webhook_backoff_max_seconds=5,
        webhook_max_attempts=3,
        webhook_timeout_seconds=1.0,
        webhook_poll_interval_seconds=0.05,
    )
    yield World(database, sessions, tenant, SecretBox(b"k" * 32), settings, hub)
    with transaction(sessions) as session:  # leave nothing for the next test's dispatchers to send
        session.execute(update(WebhookSubscription).values(active=False))
    engine.dispose()


def run_until(dispatchers: list[WebhookDispatcher], done: Callable[[], bool], timeout: float = 20.0) -> None:
    """Run the dispatchers until ``done()`` holds (or fail after ``timeout``), then stop them."""

    async def scenario() -> None:
        tasks = [asyncio.create_task(d.run()) for d in dispatchers]
        try:
            deadline = time.monotonic() + timeout
            while not await asyncio.to_thread(done):
                assert time.monotonic() < deadline, "timed out waiting for the dispatchers"
                await asyncio.sleep(0.05)
        finally:
            for d in dispatchers:
                d.stop()
            await asyncio.gather(*tasks)

    asyncio.run(scenario())


def verify(secret: str, request: Received) -> bool:
    """What docs/events.md tells receivers to do."""
    timestamp = request.headers["X-Fleetlift-Timestamp"]
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + request.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(f"sha256={expected}", request.headers["X-Fleetlift-Signature"])


# -- the tests ---------------------------------------------------------------------------------


def test_events_arrive_signed_with_the_documented_body_and_headers(
    world: World, receiver: Receiver, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    capture_fleetlift_logs(caplog, monkeypatch)
    subscription = world.subscribe(receiver.url + "/hook")
    seqs = world.emit("deployment.started", 3, deployment_id="dep_1")
    run_until([world.dispatcher()], lambda: len(receiver.on("/hook")) == 3)
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "webhook delivery" in logged and SECRET not in logged
    assert not any(
        r.headers["X-Fleetlift-Signature"].removeprefix("sha256=") in logged for r in receiver.requests
    )

    got = sorted(receiver.on("/hook"), key=lambda r: r.json["seq"])
    assert [r.json["seq"] for r in got] == seqs
    for request, seq in zip(got, seqs, strict=True):
        assert verify(SECRET, request)
        assert not verify("another-secret-entirely", request)
        body = request.json
        assert set(body) == {
            "id",
            "seq",
            "type",
            "tenant_id",
            "deployment_id",
            "device_id",
            "data",
            "created_at",
        }
        assert body["type"] == request.headers["X-Fleetlift-Event"] == "deployment.started"
        assert body["id"] == request.headers["X-Fleetlift-Delivery"]
        assert body["tenant_id"] == world.tenant and body["deployment_id"] == "dep_1" and body["seq"] == seq
        assert abs(int(request.headers["X-Fleetlift-Timestamp"]) - time.time()) < 60
        assert SECRET not in request.body.decode() and SECRET not in str(request.headers)
    log = world.deliveries(subscription)
    assert [(d.status, d.attempts, d.last_status_code) for d in log] == [("delivered", 1, 200)] * 3
    assert all(d.delivered_at is not None and d.next_attempt_at is None for d in log)


def test_a_failing_receiver_is_retried_with_backoff_until_it_answers(
    world: World, receiver: Receiver
) -> None:
    receiver.script["/flaky"] = [500, 503]
    subscription = world.subscribe(receiver.url + "/flaky")
    world.emit("deployment.halted")
    run_until(
        [world.dispatcher()], lambda: [d.status for d in world.deliveries(subscription)] == ["delivered"]
    )

    attempts = receiver.on("/flaky")
    assert len(attempts) == 3
    assert len({r.headers["X-Fleetlift-Delivery"] for r in attempts}) == 1  # one delivery, three attempts
    # Backoff base 0.2 s with the jitter pinned at its top: 0.2 s, then 0.4 s.
    assert attempts[1].at - attempts[0].at >= 0.2
    assert attempts[2].at - attempts[1].at >= 0.4
    [delivery] = world.deliveries(subscription)
    assert (delivery.status, delivery.attempts, delivery.last_status_code, delivery.last_error) == (
        "delivered",
        3,
        200,
        None,
    )


def test_a_receiver_that_stays_down_ends_failed(world: World, receiver: Receiver) -> None:
    receiver.script["/broken"] = [500] * 10
    broken = world.subscribe(receiver.url + "/broken")
    unreachable = world.subscribe("http://127.0.0.1:9/nobody-listens")  # connection refused
    receiver.delay["/slow"] = 1.5
    slow = world.subscribe(receiver.url + "/slow")  # answers after the 1 s timeout
    world.emit("deployment.failed")

    def finished() -> bool:
        log = [d for s in (broken, unreachable, slow) for d in world.deliveries(s)]
        return len(log) == 3 and all(d.status != "pending" for d in log)

    run_until([world.dispatcher()], finished, timeout=30)
    [d_broken], [d_unreachable], [d_slow] = (world.deliveries(s) for s in (broken, unreachable, slow))
    assert (d_broken.status, d_broken.attempts, d_broken.last_status_code) == ("failed", 3, 500)
    assert d_broken.last_error == "HTTP 500"
    assert (d_unreachable.status, d_unreachable.attempts, d_unreachable.last_status_code) == (
        "failed",
        3,
        None,
    )
    assert d_unreachable.last_error and "ConnectError" in d_unreachable.last_error
    assert (d_slow.status, d_slow.attempts) == ("failed", 3)
    assert d_slow.last_error and "timed out" in d_slow.last_error
    assert all(
        d.next_attempt_at is None and d.delivered_at is None for d in (d_broken, d_unreachable, d_slow)
    )
    assert len(receiver.on("/broken")) == 3


def test_filters_select_types_and_a_ping_goes_to_its_webhook_only(world: World, receiver: Receiver) -> None:
    deployments = world.subscribe(receiver.url + "/deployments", event_types=["deployment.*"])
    devices = world.subscribe(receiver.url + "/devices", event_types=["device.update_state"])
    everything = world.subscribe(receiver.url + "/all")
    world.emit("deployment.wave_opened", deployment_id="dep_1")
    world.emit("device.update_state", device_id="gw-1")
    world.emit("devicex.other")
    with world.sessions() as session:
        delivery, ping_seq = service.ping(session=session, caller=world.caller, webhook_id=devices)

    run_until(
        [world.dispatcher()],
        lambda: (
            (len(receiver.on("/deployments")), len(receiver.on("/devices")), len(receiver.on("/all")))
            == (1, 2, 3)
        ),
    )
    time.sleep(0.3)  # nothing else trickles in
    assert [r.json["type"] for r in receiver.on("/deployments")] == ["deployment.wave_opened"]
    assert sorted(r.json["type"] for r in receiver.on("/devices")) == ["device.update_state", "webhook.ping"]
    assert sorted(r.json["type"] for r in receiver.on("/all")) == [
        "deployment.wave_opened",
        "device.update_state",
        "devicex.other",
    ]
    [ping] = [r for r in receiver.on("/devices") if r.json["type"] == "webhook.ping"]
    assert ping.json["id"] == delivery and ping.json["seq"] == ping_seq
    assert ping.json["data"]["webhook_id"] == devices
    assert len(world.deliveries(deployments)) == 1 and len(world.deliveries(everything)) == 3


def test_other_tenants_events_are_not_sent(world: World, receiver: Receiver) -> None:
    mine = world.subscribe(receiver.url + "/mine")
    other = f"t-{uuid.uuid4().hex[:12]}"
    with transaction(world.sessions) as session:
        tenants.ensure(session, tenant_id=other, name=other)
        repository.emit(session, tenant_id=other, type="deployment.started", now=utcnow())
    world.emit("deployment.paused")
    run_until([world.dispatcher()], lambda: len(receiver.on("/mine")) == 1)
    time.sleep(0.3)
    assert [r.json["type"] for r in receiver.on("/mine")] == ["deployment.paused"]
    assert len(world.deliveries(mine)) == 1


@pytest.mark.parametrize("replicas", [2])
def test_two_dispatchers_deliver_each_event_exactly_once(
    world: World, receiver: Receiver, replicas: int
) -> None:
    hooks = [world.subscribe(receiver.url + f"/hook-{n}") for n in range(3)]
    engines = [small_engine(world.url) for _ in range(replicas)]  # each replica its own connections
    dispatchers = [world.dispatcher(make_session_factory(engine)) for engine in engines]
    events = 120

    async def emit_while_running() -> None:
        tasks = [asyncio.create_task(d.run()) for d in dispatchers]
        for _ in range(events // 10):
            await asyncio.to_thread(world.emit, "device.update_state", 10)
            await asyncio.sleep(0.01)
        deadline = time.monotonic() + 60
        while len(receiver.requests) < events * len(hooks):
            assert time.monotonic() < deadline, f"{len(receiver.requests)} of {events * len(hooks)} delivered"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # a duplicate would arrive now
        for d in dispatchers:
            d.stop()
        await asyncio.gather(*tasks)

    asyncio.run(emit_while_running())
    for engine in engines:
        engine.dispose()
    ids = [r.headers["X-Fleetlift-Delivery"] for r in receiver.requests]
    assert len(ids) == len(set(ids)) == events * len(hooks)
    for n, hook in enumerate(hooks):
        assert len({r.json["seq"] for r in receiver.on(f"/hook-{n}")}) == events
        assert [d.status for d in world.deliveries(hook)] == ["delivered"] * events
        assert [(d.attempts, d.last_error) for d in world.deliveries(hook)] == [(1, None)] * events


@pytest.mark.postgres
@pytest.mark.parametrize("database", ["postgres"], indirect=True)
def test_an_event_committed_late_is_not_skipped(world: World, receiver: Receiver) -> None:
    """PostgreSQL hands out seqs at insert and shows them at commit: seq n+1 can be visible while n
    is still in flight. The cursor waits for n instead of moving past it."""
    world.subscribe(receiver.url + "/ordered")
    slow = world.sessions()
    late = repository.emit(slow, tenant_id=world.tenant, type="deployment.started", now=utcnow())
    [early] = world.emit("deployment.paused")
    assert early > late

    async def scenario() -> None:
        dispatcher = world.dispatcher()
        task = asyncio.create_task(dispatcher.run())
        await asyncio.sleep(1.0)
        assert receiver.requests == []  # seq `early` waits behind the open transaction
        await asyncio.to_thread(slow.commit)
        deadline = time.monotonic() + 10
        while len(receiver.requests) < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        dispatcher.stop()
        await task

    try:
        asyncio.run(scenario())
    finally:
        slow.close()
    assert sorted(r.json["seq"] for r in receiver.requests) == [late, early]


@pytest.mark.postgres
@pytest.mark.parametrize("database", ["postgres"], indirect=True)
def test_a_rolled_back_event_holds_the_cursor_only_for_the_gap_timeout(
    world: World, receiver: Receiver
) -> None:
    world.subscribe(receiver.url + "/gap")
    doomed = world.sessions()
    repository.emit(doomed, tenant_id=world.tenant, type="deployment.started", now=utcnow())
    [kept] = world.emit("deployment.paused")
    doomed.rollback()
    doomed.close()
    started = time.monotonic()
    run_until([world.dispatcher(events_gap_timeout_seconds=1.0)], lambda: len(receiver.requests) == 1)
    assert time.monotonic() - started >= 0.9
    assert [r.json["seq"] for r in receiver.requests] == [kept]


def test_a_secret_this_server_cannot_open_fails_the_delivery_once(world: World, receiver: Receiver) -> None:
    subscription = world.subscribe(receiver.url + "/sealed")
    world.emit("deployment.started")
    dispatcher = world.dispatcher()
    dispatcher.box = SecretBox(b"another key, 32 bytes long......")  # a replica with the wrong key
    run_until([dispatcher], lambda: [d.status for d in world.deliveries(subscription)] == ["failed"])
    [delivery] = world.deliveries(subscription)
    assert delivery.attempts == 1 and delivery.last_error and "cannot be opened" in delivery.last_error
    assert receiver.requests == []


def test_more_subscriptions_than_one_pass_takes_are_all_served(
    world: World, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dispatcher_module, "SUBSCRIPTIONS_PER_PASS", 2)
    for n in range(5):
        world.subscribe(receiver.url + f"/many-{n}")
    world.emit("deployment.started", 3)
    run_until([world.dispatcher()], lambda: len(receiver.requests) == 15)
    assert sorted({r.path for r in receiver.requests}) == [f"/many-{n}" for n in range(5)]


@pytest.mark.postgres
@pytest.mark.parametrize("database", ["postgres"], indirect=True)
def test_a_gap_given_up_once_is_not_waited_out_again(
    world: World, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small fan-out batches leave the cursor below a gap already given up: it is not waited for
    again (each wait would cost the whole gap timeout)."""
    monkeypatch.setattr(dispatcher_module, "FAN_OUT_BATCH", 2)
    world.subscribe(receiver.url + "/batches")
    before_gap = world.emit("deployment.started", 3)
    doomed = world.sessions()
    gap = repository.emit(doomed, tenant_id=world.tenant, type="deployment.started", now=utcnow())
    after_gap = world.emit("deployment.paused", 3)
    doomed.rollback()
    doomed.close()
    dispatcher = world.dispatcher(events_gap_timeout_seconds=5.0)
    dispatcher._first_seen[gap] = time.monotonic() - 10  # missing long enough: given up at once
    started = time.monotonic()
    run_until([dispatcher], lambda: len(receiver.requests) == 6)
    assert time.monotonic() - started < 3  # not another 5 s when the cursor comes back below it
    assert sorted(r.json["seq"] for r in receiver.requests) == before_gap + after_gap


def test_an_outage_is_logged_once_not_every_pass(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    capture_fleetlift_logs(caplog, monkeypatch)
    engine = make_engine(f"sqlite:///{tmp_path / 'never-migrated.db'}")  # every pass fails: no tables
    settings = Settings(data_dir=tmp_path, webhook_poll_interval_seconds=0.02)
    dispatcher = WebhookDispatcher(
        sessions=make_session_factory(engine), box=SecretBox(b"k" * 32), hub=EventHub(), settings=settings
    )
    passes = 0
    original = dispatcher.pass_once

    async def counted() -> bool:
        nonlocal passes
        passes += 1
        return await original()

    monkeypatch.setattr(dispatcher, "pass_once", counted)
    run_until([dispatcher], lambda: passes >= 10)
    engine.dispose()
    errors = {
        id(r): r
        for r in caplog.records
        if r.name == "fleetlift.events.dispatcher" and r.levelno >= logging.ERROR
    }  # by identity: a record may reach the capture through more than one handler
    assert len(errors) == 1 and next(iter(errors.values())).exc_info is not None
