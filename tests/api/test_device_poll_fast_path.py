"""The lean device poll: cached token signatures that still honour revocation at once (in every
server process), long polls woken by a deployment change, last_seen_at written at most once per
resolution, 304 without the release, and the fast path answering exactly as the route. Every
test runs on SQLite and on PostgreSQL (the ``api`` fixture)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from fleetlift.app import create_app
from fleetlift.deployments import repository
from fleetlift.device_api.poll import DevicePoller
from fleetlift.devices.models import Device

from .conftest import Api
from .test_device_protocol import admitted_device, poll

POLL = "/api/device/v1/deployments/next"


def poller_of(api: Api) -> DevicePoller:
    poller: DevicePoller = api.client.app.state.device_poller  # type: ignore[attr-defined]
    return poller


def token_of(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


def deploy(api: Api, device_ids: list[str], **body: Any) -> dict[str, Any]:
    release = api.release(device_types=[])
    answer = api.post(
        "/deployments",
        json={"name": "p", "release_id": release["id"], "target": {"device_ids": device_ids}, **body},
    )
    assert answer.status_code == 201, answer.text
    deployment: dict[str, Any] = answer.json()
    return deployment


@pytest.fixture
def second_process(api: Api) -> Iterator[TestClient]:
    """Another server process on the same database: an app of its own, with its own caches."""
    settings = api.client.app.state.settings  # type: ignore[attr-defined]
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.mark.parametrize("event", ["reject", "decommission"])
def test_revocation_takes_effect_at_once_for_a_cached_token(
    api: Api, second_process: TestClient, event: str
) -> None:
    device_id, headers = admitted_device(api, f"F-1-{event}")
    assert poll(api, headers).status_code == 204
    assert second_process.get(POLL, headers=headers).status_code == 204
    for app in (api.client.app, second_process.app):
        verified = app.state.device_tokens.verified  # type: ignore[attr-defined]
        assert verified.get(token_of(headers), time.time()) is not None  # the signature is cached
    assert api.post(f"/devices/{device_id}/{event}").status_code == 200
    for client in (api.client, second_process):
        refused = client.get(POLL, headers=headers)
        assert refused.status_code == 401, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.json()["detail"] == "the device is no longer admitted"
        assert client.get(POLL, headers=headers, params={"wait": 5}).status_code == 401


def test_a_deleted_device_and_a_foreign_or_broken_token_are_refused(api: Api) -> None:
    device_id, headers = admitted_device(api, "F-2")
    assert poll(api, headers).status_code == 204
    assert api.delete(f"/devices/{device_id}").status_code == 204
    assert poll(api, headers).status_code == 401
    admin = {"Authorization": f"Bearer {api.token('admin')}"}
    assert api.client.get(POLL, headers=admin).status_code == 401
    assert api.client.get(POLL, headers={"Authorization": "Bearer not-a-token"}).status_code == 401
    assert api.client.get(POLL, headers={"Authorization": "Basic abc"}).status_code == 401
    assert api.client.get(POLL).status_code == 401


def test_an_expired_cached_token_is_refused() -> None:
    from fleetlift.device_api.tokens import DeviceClaims, VerifiedTokens

    cache = VerifiedTokens(max_entries=2)
    claims = DeviceClaims("t", "d", datetime.now(UTC))
    cache.put("a", 100.0, claims)
    assert cache.get("a", 99.0) == claims
    assert cache.get("a", 100.0) is None and len(cache) == 0  # dead from its exp on, and dropped
    for name in ("a", "b", "c"):
        cache.put(name, 200.0, claims)
    assert len(cache) == 2 and cache.get("a", 0) is None  # bounded: the least recently used goes


def _wait_for_waiters(poller: DevicePoller, count: int = 1) -> None:
    deadline = time.monotonic() + 10
    while poller.notifier.waiting() < count:
        assert time.monotonic() < deadline, "the long poll never started waiting"
        time.sleep(0.01)


def test_a_deployment_created_while_a_long_poll_waits_answers_it_within_a_fraction_of_a_second(
    api: Api,
) -> None:
    device_id, headers = admitted_device(api, "F-3")
    poller = poller_of(api)
    result: dict[str, Any] = {}

    def wait_for_update() -> None:
        result["response"] = poll(api, headers, wait=30)
        result["answered"] = time.monotonic()

    waiter = threading.Thread(target=wait_for_update)
    waiter.start()
    _wait_for_waiters(poller)
    release = api.release(device_types=[])
    created = time.monotonic()
    api.post(
        "/deployments", json={"name": "p", "release_id": release["id"], "target": {"device_ids": [device_id]}}
    )
    committed = time.monotonic()
    waiter.join(timeout=30)
    assert result["response"].status_code == 200
    assert result["answered"] - committed < 0.5, result["answered"] - created
    assert result["response"].json()["state"] == "notified"


def test_starting_a_draft_wakes_the_long_poll(api: Api) -> None:
    device_id, headers = admitted_device(api, "F-4")
    draft = deploy(api, [device_id], status="draft")
    poller = poller_of(api)
    result: dict[str, Any] = {}

    def wait_for_update() -> None:
        result["response"] = poll(api, headers, wait=30)
        result["answered"] = time.monotonic()

    waiter = threading.Thread(target=wait_for_update)
    waiter.start()
    _wait_for_waiters(poller)
    current = api.get(f"/deployments/{draft['id']}")
    body = {k: current.json()[k] for k in ("name", "release_id", "target", "priority", "labels", "start_at")}
    started = api.put(
        f"/deployments/{draft['id']}",
        json={**body, "status": "active"},
        headers={"If-Match": current.headers["ETag"]},
    )
    assert started.status_code == 200, started.text
    committed = time.monotonic()
    waiter.join(timeout=30)
    assert result["response"].status_code == 200
    assert result["answered"] - committed < 0.5


def test_a_change_made_by_another_process_is_seen_by_the_recheck(
    api: Api, second_process: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    device_id, headers = admitted_device(api, "F-5")
    poller = poller_of(api)
    monkeypatch.setattr(poller, "recheck_seconds", 0.3)
    result: dict[str, Any] = {}

    def wait_for_update() -> None:
        result["response"] = poll(api, headers, wait=30)
        result["answered"] = time.monotonic()

    waiter = threading.Thread(target=wait_for_update)
    waiter.start()
    _wait_for_waiters(poller)
    release = api.release(device_types=[])
    admin = {"Authorization": f"Bearer {api.token('admin')}"}
    created = second_process.post(  # this process's notifier hears nothing of it
        "/api/v1/deployments",
        headers=admin,
        json={"name": "p", "release_id": release["id"], "target": {"device_ids": [device_id]}},
    )
    assert created.status_code == 201
    committed = time.monotonic()
    waiter.join(timeout=30)
    assert result["response"].status_code == 200
    assert result["answered"] - committed < 3


def test_a_long_poll_with_nothing_to_do_answers_204_when_its_time_is_up(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, headers = admitted_device(api, "F-6")
    monkeypatch.setattr(poller_of(api), "recheck_seconds", 0.2)
    started = time.monotonic()
    assert poll(api, headers, wait=1).status_code == 204
    assert 0.9 < time.monotonic() - started < 5


def last_seen(api: Api, device_id: str) -> str | None:
    value: str | None = api.get(f"/devices/{device_id}").json()["last_seen_at"]
    return value


def test_last_seen_at_is_written_at_most_once_per_resolution(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    device_id, headers = admitted_device(api, "F-7")
    poller = poller_of(api)
    with poller.sessions() as session:  # as if the device had not been seen for a long time
        session.execute(
            update(Device)
            .where(Device.tenant_id == api.tenant, Device.id == device_id)
            .values(last_seen_at=None)
        )
        session.commit()
    assert poll(api, headers).status_code == 204
    poller.flush_seen()
    first = last_seen(api, device_id)
    assert first is not None
    for _ in range(3):
        assert poll(api, headers).status_code == 204
    assert not any(key == (api.tenant, device_id) for key in poller.seen._pending)  # nothing noted
    poller.flush_seen()
    assert last_seen(api, device_id) == first  # within the resolution: not rewritten
    monkeypatch.setattr(poller.seen, "resolution", timedelta(0))
    time.sleep(0.01)
    assert poll(api, headers).status_code == 204
    poller.flush_seen()
    later = last_seen(api, device_id)
    assert later is not None and later > first


def test_an_unchanged_answer_is_304_without_loading_the_release(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    device_id, headers = admitted_device(api, "F-8")
    deployment = deploy(api, [device_id])
    first = poll(api, headers)
    assert first.status_code == 200 and first.json()["deployment_id"] == deployment["id"]
    etag = first.headers["ETag"]

    def no_release(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("a 304 must not load the release")

    poller = poller_of(api)
    monkeypatch.setattr(poller, "_release", no_release)
    unchanged = poll(api, {**headers, "If-None-Match": f'"other", {etag}'})
    assert unchanged.status_code == 304 and unchanged.headers["ETag"] == etag
    assert unchanged.headers["X-Fleetlift-Poll-Interval"] == "60" and unchanged.content == b""
    monkeypatch.undo()
    release_id = first.json()["release"]["id"]
    current = api.get(f"/releases/{release_id}")
    changed = api.put(
        f"/releases/{release_id}",
        json={"device_types": [], "architectures": ["arm64"], "notes": "now with notes"},
        headers={"If-Match": current.headers["ETag"]},
    )
    assert changed.status_code == 200, changed.text
    again = poll(api, {**headers, "If-None-Match": etag})
    assert again.status_code == 200 and again.headers["ETag"] != etag  # the release changed


def _comparable(response: Any) -> tuple[int, dict[str, str], Any]:
    headers = {k: v for k, v in response.headers.items() if k not in {"x-request-id", "content-length"}}
    body: Any = response.content
    if response.status_code == 200:
        body = response.json()
        for file in body["files"]:
            file.pop("url")  # signed with an expiry taken from the clock
    return response.status_code, headers, body


def test_the_fast_path_answers_exactly_as_the_route(api: Api) -> None:
    device_id, headers = admitted_device(api, "F-9")
    _, idle_headers = admitted_device(api, "F-10")
    deploy(api, [device_id])
    etag = poll(api, headers).headers["ETag"]
    cases = [
        (headers, {}),
        (idle_headers, {}),
        ({**headers, "If-None-Match": etag}, {}),
        ({**headers, "If-None-Match": '"nope"'}, {"wait": "0"}),
    ]
    for case_headers, params in cases:
        fast = api.client.get(POLL, headers=case_headers, params=params)
        # An extra query parameter is not the fast path's to judge: the route answers.
        routed = api.client.get(POLL, headers=case_headers, params={**params, "via": "route"})
        assert _comparable(fast) == _comparable(routed)
    for params in ({"wait": "61"}, {"wait": "-1"}, {"wait": "x"}):
        assert api.client.get(POLL, headers=headers, params=params).status_code == 400
    too_long = api.client.get(POLL, headers={**headers, "If-None-Match": '"' + "x" * 250 + '"'})
    assert too_long.status_code == 400


def test_polls_are_measured_under_the_route_template(api: Api) -> None:
    _, headers = admitted_device(api, "F-11")
    assert poll(api, headers).status_code == 204
    metrics = api.client.get("/metrics").text
    assert 'route="/api/device/v1/deployments/next",status="204"' in metrics


def test_the_poll_follows_the_deployment_the_rules_choose(api: Api) -> None:
    device_id, headers = admitted_device(api, "F-12")
    low = deploy(api, [device_id], priority=1)
    high = deploy(api, [device_id], priority=5)
    deploy(api, [device_id], priority=9, status="draft")
    deploy(api, [device_id], priority=9, start_at=(datetime.now(UTC) + timedelta(days=1)).isoformat())
    newest_high = deploy(api, [device_id], priority=5)

    def effective() -> str | None:
        rows = api.get(f"/devices/{device_id}/deployments").json()
        chosen = [row["deployment_id"] for row in rows if row["effective"]]
        return chosen[0] if chosen else None

    def polled() -> str | None:
        answer = poll(api, headers)
        return answer.json()["deployment_id"] if answer.status_code == 200 else None

    assert polled() == effective() == newest_high["id"]
    path = f"/api/device/v1/deployments/{newest_high['id']}/status"
    assert api.client.put(path, headers=headers, json={"status": "failed"}).status_code == 204
    assert polled() == effective() == high["id"]  # finished for this device: the next one
    current = api.get(f"/deployments/{high['id']}")
    body = {k: current.json()[k] for k in ("name", "release_id", "target", "priority", "labels", "start_at")}
    paused = api.put(
        f"/deployments/{high['id']}",
        json={**body, "status": "paused"},
        headers={"If-Match": current.headers["ETag"]},
    )
    assert paused.status_code == 200, paused.text
    assert polled() == effective() == low["id"]
    assert api.delete(f"/deployments/{low['id']}", params={"force": "true"}).status_code == 204
    assert polled() is None and effective() is None


def test_the_compiled_poll_query_returns_what_the_session_query_does(api: Api) -> None:
    device_id, headers = admitted_device(api, "F-13")
    idle_id, _ = admitted_device(api, "F-14")
    deploy(api, [device_id])
    assert poll(api, headers).status_code == 200  # notified, and seen
    poller = poller_of(api)
    poller.flush_seen()
    now = datetime.now(UTC)
    for wanted in (device_id, idle_id, "no-such-device"):
        with poller.sessions() as session:
            expected = repository.poll_row(session, tenant_id=api.tenant, device_id=wanted, now=now)
        assert poller.query.run(tenant_id=api.tenant, device_id=wanted, now=now) == expected
    row = poller.query.run(tenant_id=api.tenant, device_id=device_id, now=now)
    assert row is not None and row.state == "notified" and row.last_seen_at is not None
    assert row.last_seen_at.tzinfo is not None


def test_the_poll_query_on_the_event_loop_returns_what_the_session_query_does(api: Api) -> None:
    """On PostgreSQL the poll's query is awaited on the event loop over psycopg's asynchronous
    connections; it gives the rows the session query gives, and its connections are reused."""
    poller = poller_of(api)
    if not poller.query.runs_on_loop:
        pytest.skip("only PostgreSQL through psycopg runs the poll query on the event loop")
    device_id, headers = admitted_device(api, "F-15")
    idle_id, _ = admitted_device(api, "F-16")
    deploy(api, [device_id])
    assert poll(api, headers).status_code == 200
    now = datetime.now(UTC)

    async def on_the_loop(wanted: str) -> Any:
        return await poller.query.run_async(tenant_id=api.tenant, device_id=wanted, now=now)

    for wanted in (device_id, idle_id, "no-such-device"):
        with poller.sessions() as session:
            expected = repository.poll_row(session, tenant_id=api.tenant, device_id=wanted, now=now)
        assert api.client.portal.call(on_the_loop, wanted) == expected  # type: ignore[union-attr]
    pools = list(poller.query._loop_pools.values())
    assert len(pools) == 1 and 1 <= len(pools[0]._idle) <= repository.POLL_QUERY_CONNECTIONS
