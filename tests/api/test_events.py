"""The event log through the management API: JSON pages with filters and cursors, and the live
Server-Sent Events stream from a real uvicorn server (events after connecting, resuming with
Last-Event-ID without loss or repeats, filters, tenants, keep-alives, client disconnect, and a
server process told to stop)."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from fleetlift.app import create_app, local_issuer
from fleetlift.auth import Role
from fleetlift.config import Settings
from fleetlift.db import make_engine, make_session_factory, transaction, utcnow
from fleetlift.events import repository, stream
from fleetlift.events.stream import EventHub, install_session_hooks
from fleetlift.tenants import repository as tenants

from ..ports import free_port
from .conftest import Api

BIN = Path(sys.executable).parent


def emit(app: Any, tenant: str, type: str, count: int = 1, **fields: Any) -> list[int]:
    """Events written the way services write them: in a transaction of the app's sessions."""
    with transaction(app.state.sessions) as session:
        return [
            repository.emit(session, tenant_id=tenant, type=type, now=utcnow(), data={"n": n}, **fields)
            for n in range(count)
        ]


# -- JSON --------------------------------------------------------------------------------------


def test_events_page_oldest_first_with_filters_and_cursors(api: Api) -> None:
    app = api.client.app
    started = emit(app, api.tenant, "deployment.started", deployment_id="dep_a")
    waves = emit(app, api.tenant, "deployment.wave_opened", 2, deployment_id="dep_a")
    device = emit(app, api.tenant, "device.update_state", device_id="gw-1", deployment_id="dep_b")
    emit(
        app, f"t-{uuid.uuid4().hex[:8]}", "deployment.started"
    )  # another tenant's (no such tenant row needed)

    everything = api.get("/events", role="viewer")
    assert everything.status_code == 200 and everything.headers["content-type"] == "application/json"
    items = everything.json()["items"]
    assert [e["seq"] for e in items] == started + waves + device
    assert items[0] | {"created_at": None} == {
        "seq": started[0],
        "type": "deployment.started",
        "deployment_id": "dep_a",
        "device_id": None,
        "data": {"n": 0},
        "created_at": None,
    }

    def seqs(**params: Any) -> list[int]:
        response = api.get("/events", params=params, role="viewer")
        assert response.status_code == 200, response.text
        return [e["seq"] for e in response.json()["items"]]

    assert seqs(type="deployment.") == started + waves
    assert seqs(type="deployment.*") == started + waves
    assert seqs(type=["deployment.wave", "device."]) == waves + device
    assert seqs(deployment_id="dep_a") == started + waves
    assert seqs(device_id="gw-1") == device
    assert seqs(after=waves[0]) == waves[1:] + device

    first = api.get("/events", params={"limit": 2}).json()
    assert [e["seq"] for e in first["items"]] == started + waves[:1]
    rest = api.get("/events", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [e["seq"] for e in rest["items"]] == waves[1:] + device and rest["next_cursor"] is None
    assert api.get("/events", params={"cursor": "garbage!"}).status_code == 400


def test_the_event_stream_is_documented_beside_the_json(api: Api) -> None:
    operation = api.client.app.openapi()["paths"]["/api/v1/events"]["get"]  # type: ignore[attr-defined]
    content = operation["responses"]["200"]["content"]
    assert set(content) == {"application/json", "text/event-stream"}
    assert "id: " in content["text/event-stream"]["example"]
    assert {"Last-Event-ID", "after", "type"} <= {p["name"] for p in operation["parameters"]}
    assert operation["x-fleetlift-roles"] == ["admin", "developer", "operator", "viewer"]


def test_commits_that_emitted_wake_readers_and_rollbacks_do_not(api: Api) -> None:
    engine = make_engine(api.client.app.state.settings.resolved_database_url)  # type: ignore[attr-defined]
    sessions = make_session_factory(engine)
    hub = EventHub()
    install_session_hooks(sessions, hub)
    before = (hub.generation(api.tenant), hub.generation(stream.ANY))
    with sessions() as session:
        repository.emit(session, tenant_id=api.tenant, type="deployment.paused", now=utcnow())
        session.rollback()
        session.commit()  # nothing emitted in this transaction any more
    assert (hub.generation(api.tenant), hub.generation(stream.ANY)) == before
    with transaction(sessions) as session:
        repository.emit(session, tenant_id=api.tenant, type="deployment.paused", now=utcnow())
    assert (hub.generation(api.tenant), hub.generation(stream.ANY)) == (before[0] + 1, before[1] + 1)
    engine.dispose()


# -- the stream, from a real server ------------------------------------------------------------


@dataclass
class Live:
    app: FastAPI
    base: str
    settings: Settings

    def tenant(self) -> str:
        name = f"t-{uuid.uuid4().hex[:12]}"
        with transaction(self.app.state.sessions) as session:
            tenants.ensure(session, tenant_id=name, name=name)
        return name

    def token(self, tenant: str, role: Role = Role.VIEWER) -> str:
        return local_issuer(self.settings).issue(
            "watcher", frozenset({role}), timedelta(minutes=10), tenant_id=tenant
        )


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def live(request: pytest.FixtureRequest) -> Iterator[Live]:
    """The app served by uvicorn on a thread: real sockets, real streaming."""
    settings: Settings = request.getfixturevalue(f"{request.param}_settings")
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield Live(app, f"http://127.0.0.1:{port}", settings)
    app.state.events.hub.close()
    server.should_exit = True
    thread.join(timeout=15)
    assert not thread.is_alive()


@dataclass
class Frame:
    id: str | None = None
    event: str | None = None
    data: str = ""
    comments: list[str] = field(default_factory=list)

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.data)  # type: ignore[no-any-return]


class Stream:
    """An SSE client on a thread: parsed frames land in a queue; ``close`` hangs up."""

    def __init__(self, url: str, token: str, headers: dict[str, str] | None = None, **params: Any) -> None:
        self.frames: queue.Queue[Frame | None] = queue.Queue()
        self.client = httpx.Client(timeout=httpx.Timeout(5, read=60))
        self.status: int | None = None
        self.response: httpx.Response | None = None
        self.content_type = ""
        self._opened = threading.Event()
        all_headers = {"Accept": "text/event-stream", "Authorization": f"Bearer {token}", **(headers or {})}
        self.thread = threading.Thread(target=self._read, args=(url, all_headers, params), daemon=True)
        self.thread.start()
        assert self._opened.wait(10)
        if self.status == 200:
            first = self.next()
            assert first.comments == ["connected"], first

    def _read(self, url: str, headers: dict[str, str], params: dict[str, Any]) -> None:
        try:
            with self.client.stream("GET", url, headers=headers, params=params) as response:
                self.response = response
                self.status = response.status_code
                self.content_type = response.headers.get("content-type", "")
                self._opened.set()
                current = Frame()
                for line in response.iter_lines():
                    if line == "":
                        self.frames.put(current)
                        current = Frame()
                    elif line.startswith(":"):
                        current.comments.append(line[1:].strip())
                    else:
                        name, _, value = line.partition(":")
                        value = value.removeprefix(" ")
                        if name == "data":
                            current.data += value
                        elif name in ("id", "event"):
                            setattr(current, name, value)
        except (httpx.HTTPError, RuntimeError):
            pass  # closed by us
        finally:
            self._opened.set()
            self.frames.put(None)

    def next(self, timeout: float = 10) -> Frame:
        frame = self.frames.get(timeout=timeout)
        assert frame is not None, "the stream ended"
        return frame

    def events(self, count: int, timeout: float = 10) -> list[Frame]:
        found: list[Frame] = []
        deadline = time.monotonic() + timeout
        while len(found) < count:
            frame = self.next(max(0.01, deadline - time.monotonic()))
            if frame.id is not None:
                found.append(frame)
        return found

    def quiet(self, seconds: float) -> list[Frame]:
        """Events (not comments) that arrive within ``seconds``."""
        seen: list[Frame] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                frame = self.frames.get(timeout=left)
            except queue.Empty:
                break
            if frame is None:
                break
            if frame.id is not None:
                seen.append(frame)
        return seen

    def ended(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                if self.frames.get(timeout=left) is None:
                    return True
            except queue.Empty:
                return False
        return False

    def close(self) -> None:
        if self.response is not None:  # hang up: the reading thread, blocked in recv, sees the end
            network = self.response.extensions.get("network_stream")
            sock = network.get_extra_info("socket") if network is not None else None
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(timeout=10)
        self.client.close()


def test_a_stream_gets_events_after_it_connected_and_resumes_without_loss_or_repeats(live: Live) -> None:
    tenant = live.tenant()
    url = f"{live.base}/api/v1/events"
    token = live.token(tenant)
    emit(live.app, tenant, "deployment.started")  # before connecting: not sent
    watcher = Stream(url, token)
    assert watcher.status == 200 and watcher.content_type.startswith("text/event-stream")

    here = emit(live.app, tenant, "deployment.wave_opened", 3, deployment_id="dep_1")  # wakes the stream
    # Another process's commit (its own engine, no hooks here): the stream's re-check finds it.
    engine = make_engine(live.settings.resolved_database_url)
    elsewhere_sessions = make_session_factory(engine)
    with transaction(elsewhere_sessions) as session:
        elsewhere = [
            repository.emit(
                session, tenant_id=tenant, type="device.update_state", now=utcnow(), device_id="gw-9"
            )
            for _ in range(2)
        ]
    engine.dispose()
    got = watcher.events(5)
    assert [int(f.id or 0) for f in got] == here + elsewhere
    assert [f.event for f in got] == ["deployment.wave_opened"] * 3 + ["device.update_state"] * 2
    assert got[0].json | {"created_at": None} == {
        "seq": here[0],
        "type": "deployment.wave_opened",
        "deployment_id": "dep_1",
        "device_id": None,
        "data": {"n": 0},
        "created_at": None,
    }
    watcher.close()

    missed = emit(live.app, tenant, "deployment.paused", 2)
    resumed = Stream(url, token, headers={"Last-Event-ID": got[-1].id or ""})
    assert [int(f.id or 0) for f in resumed.events(2)] == missed
    assert resumed.quiet(1.5) == []  # nothing repeated
    later = emit(live.app, tenant, "deployment.resumed")
    assert [int(f.id or 0) for f in resumed.events(1)] == later
    resumed.close()

    by_query = Stream(url, token, after=got[-1].id)
    assert [int(f.id or 0) for f in by_query.events(3)] == missed + later
    by_query.close()


def test_a_stream_follows_its_filters_and_its_tenant_only(live: Live) -> None:
    tenant, other = live.tenant(), live.tenant()
    url = f"{live.base}/api/v1/events"
    waves = Stream(url, live.token(tenant), type="deployment.wave")
    one_device = Stream(url, live.token(tenant), device_id="gw-2")
    emit(live.app, other, "deployment.wave_opened")
    emit(live.app, tenant, "deployment.paused")
    opened = emit(live.app, tenant, "deployment.wave_opened", deployment_id="dep_x")
    emit(live.app, tenant, "device.update_state", device_id="gw-1")
    mine = emit(live.app, tenant, "device.update_state", device_id="gw-2")
    assert [int(f.id or 0) for f in waves.events(1)] == opened
    assert [int(f.id or 0) for f in one_device.events(1)] == mine
    assert waves.quiet(1.2) == [] and one_device.quiet(0.1) == []
    waves.close()
    one_device.close()


def test_a_stream_keeps_alive_and_ends_when_the_client_hangs_up(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream, "KEEPALIVE_SECONDS", 0.4)
    tenant = live.tenant()
    watcher = Stream(f"{live.base}/api/v1/events", live.token(tenant))
    frame = watcher.next(timeout=5)
    assert frame.comments == ["keep-alive"] and frame.id is None
    hub: EventHub = live.app.state.events.hub
    assert hub._waiters.get(tenant)  # the stream waits on the hub
    watcher.close()
    deadline = time.monotonic() + 5
    while hub._waiters.get(tenant):
        assert time.monotonic() < deadline, "the stream outlived its client"
        time.sleep(0.05)


def test_a_stream_needs_a_token_and_a_sane_last_event_id(live: Live) -> None:
    url = f"{live.base}/api/v1/events"
    refused = httpx.get(url, headers={"Accept": "text/event-stream"})
    assert refused.status_code == 401
    bad = httpx.get(
        url,
        headers={
            "Accept": "text/event-stream",
            "Authorization": f"Bearer {live.token(live.tenant())}",
            "Last-Event-ID": "yesterday",
        },
    )
    assert bad.status_code == 400 and bad.headers["content-type"].startswith("application/problem+json")


def test_streams_end_cleanly_when_the_server_is_told_to_stop(tmp_path: Path) -> None:
    """SIGTERM to a real server process with a stream open: the stream ends and the process
    exits at once (uvicorn would otherwise wait for the never-ending response)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETLIFT_")}
    env |= {"FLEETLIFT_DATA_DIR": str(tmp_path), "FLEETLIFT_LOG_LEVEL": "WARNING"}
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(
        [str(BIN / "fleetlift"), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.1)
        token = local_issuer(Settings(data_dir=tmp_path)).issue(
            "watcher", frozenset({Role.VIEWER}), timedelta(minutes=5), tenant_id="default"
        )
        watcher = Stream(f"{base}/api/v1/events", token)
        stopped_at = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert watcher.ended(timeout=5), "the stream stayed open after SIGTERM"
        # uvicorn shuts down gracefully, then re-raises the signal it caught: -SIGTERM.
        assert process.wait(timeout=10) in (0, -signal.SIGTERM)
        assert "Traceback" not in (tmp_path / "server.log").read_text()
        assert time.monotonic() - stopped_at < 5
        watcher.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()


def test_a_stream_never_skips_an_event_committed_late(live: Live) -> None:
    """PostgreSQL shows seq n+1 before n when n's transaction commits later; the stream holds n+1
    back until n is there, so a client resuming after n+1 has not missed n. (SQLite serialises
    writers: numbers are visible in order anyway.)"""
    tenant = live.tenant()
    watcher = Stream(f"{live.base}/api/v1/events", live.token(tenant))
    slow = live.app.state.sessions()
    try:
        late = repository.emit(slow, tenant_id=tenant, type="deployment.started", now=utcnow())
        if live.app.state.engine.dialect.name == "sqlite":
            slow.commit()  # the writer holds SQLite's lock: nobody else could write meanwhile
            early = emit(live.app, tenant, "deployment.paused")
        else:
            early = emit(live.app, tenant, "deployment.paused")
            assert watcher.quiet(1.5) == []  # early waits behind the open transaction
            slow.commit()
    finally:
        slow.close()
    assert [int(f.id or 0) for f in watcher.events(2)] == [late, *early]
    watcher.close()


def test_nested_lifespans_each_run_and_stop_their_own_dispatcher(sqlite_settings: Settings) -> None:
    """Test clients (schemathesis's among them) may run an app's lifespan again, on other loops,
    while it runs: each stops cleanly, and streams end only when the last one stops."""
    app = create_app(sqlite_settings)
    hub: EventHub = app.state.events.hub
    with TestClient(app) as outer:
        with TestClient(app) as inner:
            assert inner.get("/healthz").status_code == 200
        assert not hub.closed
        assert outer.get("/healthz").status_code == 200
    assert hub.closed
