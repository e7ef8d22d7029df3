"""Rollouts through the HTTP API, on SQLite and PostgreSQL: waves, thresholds, halts and rollbacks,
soak, approval, concurrency, maintenance windows, timeouts, dynamic targeting, operator actions.

Time is driven by stepping the reconciler with an explicit ``now``. The application's own
reconciler runs in the background with the real clock; every step is idempotent and derived from
committed state, so whichever gets there first, the outcome asserted is the same."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy import select

from fleetlift.channels.memory import MemoryChannel
from fleetlift.db import transaction
from fleetlift.deployments import service as deployments
from fleetlift.deployments.rules import DeviceUpdateState
from fleetlift.events.models import Event

from .conftest import Api
from .test_device_admission import auth_request

POLL = "/api/device/v1/deployments/next"


@dataclass
class Gateway:
    """A device admitted through the device protocol, with its token."""

    id: str
    headers: dict[str, str]


def admitted(api: Api, device_id: str, tags: dict[str, str] | None = None) -> Gateway:
    key = ed25519.Ed25519PrivateKey.generate()
    assert auth_request(api, key, {"device_id": device_id}).status_code == 401  # pending admission
    assert api.post(f"/devices/{device_id}/accept").status_code == 200
    if tags:
        assert api.put(f"/devices/{device_id}", json={"name": device_id, "tags": tags}).status_code == 200
    token = auth_request(api, key, {"device_id": device_id}).json()["token"]
    return Gateway(device_id, {"Authorization": f"Bearer {token}"})


def release(api: Api) -> str:
    return str(api.release(device_types=[], architectures=[])["id"])


def devices(api: Api, prefix: str, count: int, **tags: str) -> list[str]:
    """Devices registered through the management API (reports then go through the service)."""
    ids = [f"{prefix}-{index:02d}" for index in range(count)]
    for device_id in ids:
        api.device(device_id, tags=dict(tags))
    return ids


def deploy(api: Api, release_id: str, target: dict[str, Any], policy: dict[str, Any], **extra: Any) -> str:
    body = {"name": "rollout", "release_id": release_id, "target": target, "policy": policy, **extra}
    response = api.post("/deployments", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def get(api: Api, deployment_id: str) -> dict[str, Any]:
    response = api.get(f"/deployments/{deployment_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def states(api: Api, deployment_id: str) -> dict[str, tuple[str, int]]:
    """device -> (state, wave)."""
    rows = api.get(f"/deployments/{deployment_id}/devices", params={"limit": 1000}).json()["items"]
    return {row["device_id"]: (row["state"], row["wave"]) for row in rows}


def step(api: Api, deployment_id: str, now: datetime | None = None) -> list[str]:
    """One reconcile step of a deployment, waiting for a concurrent one rather than skipping it."""
    reconciler = api.client.app.state.reconciler  # type: ignore[attr-defined]
    released: list[str] = reconciler.step(
        api.tenant, deployment_id, now=now or datetime.now(UTC), skip_locked=False
    )
    return released


def report(api: Api, deployment_id: str, device_id: str, *path: str) -> None:
    """A device's reports, through the same service the device protocol calls."""
    for state in path:
        with transaction(api.client.app.state.sessions) as session:  # type: ignore[attr-defined]
            deployments.record_device_report(
                session=session,
                tenant_id=api.tenant,
                deployment_id=deployment_id,
                device_id=device_id,
                state=DeviceUpdateState(state),
            )


def succeed(api: Api, deployment_id: str, *device_ids: str) -> None:
    for device_id in device_ids:
        report(api, deployment_id, device_id, "installing", "succeeded")


def fail(api: Api, deployment_id: str, *device_ids: str) -> None:
    for device_id in device_ids:
        report(api, deployment_id, device_id, "installing", "failed")


def events(api: Api, deployment_id: str, prefix: str = "") -> list[tuple[str, str | None, dict[str, Any]]]:
    """(type, device, data) of a deployment's events, in order."""
    with transaction(api.client.app.state.sessions) as session:  # type: ignore[attr-defined]
        rows = session.scalars(
            select(Event)
            .where(Event.tenant_id == api.tenant, Event.deployment_id == deployment_id)
            .order_by(Event.seq)
        ).all()
        return [(e.type, e.device_id, dict(e.data)) for e in rows if e.type.startswith(prefix)]


def in_state(api: Api, deployment_id: str, state: str) -> list[str]:
    return sorted(d for d, (s, _) in states(api, deployment_id).items() if s == state)


# -- waves ---------------------------------------------------------------------------------------


def test_waves_open_in_order_as_devices_report_success_through_the_device_protocol(api: Api) -> None:
    gateways = [admitted(api, f"wv-{index}") for index in range(6)]
    release_id = release(api)
    policy = {"waves": [{"name": "canary", "device_ids": ["wv-3"]}, {"percent": 50}]}
    deployment_id = deploy(api, release_id, {"device_ids": [g.id for g in gateways]}, policy)

    # canary: wv-3; 50% of 6 = 3 of the rest in device-ID order; the remainder takes the last 2
    assert states(api, deployment_id) == {
        "wv-3": ("pending", 0),
        "wv-0": ("waiting", 1),
        "wv-1": ("waiting", 1),
        "wv-2": ("waiting", 1),
        "wv-4": ("waiting", 2),
        "wv-5": ("waiting", 2),
    }
    read = get(api, deployment_id)
    assert read["rollout"]["state"] == "wave_open" and read["rollout"]["wave_count"] == 3
    assert [(w["name"], w["devices"], w["in_flight"], w["waiting"]) for w in read["rollout"]["waves"]] == [
        ("canary", 1, 1, 0),
        ("50%", 3, 0, 3),
        ("remainder", 2, 0, 2),
    ]
    assert read["policy"]["waves"][0]["device_ids"] == ["wv-3"]
    by_id = {g.id: g for g in gateways}

    # a waiting device is offered nothing and may not report; the canary gets its update, soft
    assert api.client.get(POLL, headers=by_id["wv-0"].headers).status_code == 204
    refused = api.client.put(
        f"/api/device/v1/deployments/{deployment_id}/status",
        headers=by_id["wv-0"].headers,
        json={"status": "downloading"},
    )
    assert refused.status_code == 409, refused.text
    offered = api.client.get(POLL, headers=by_id["wv-3"].headers)
    assert offered.status_code == 200 and offered.json()["forced"] is False

    def device_succeeds(gateway: Gateway) -> None:
        path = f"/api/device/v1/deployments/{deployment_id}/status"
        for status in ("downloading", "installing", "succeeded"):
            assert api.client.put(path, headers=gateway.headers, json={"status": status}).status_code == 204

    device_succeeds(by_id["wv-3"])
    step(api, deployment_id)
    assert get(api, deployment_id)["rollout"]["current_wave"] == 1
    assert in_state(api, deployment_id, "waiting") == ["wv-4", "wv-5"]
    for device_id in ("wv-0", "wv-1", "wv-2"):
        assert api.client.get(POLL, headers=by_id[device_id].headers).status_code == 200
        device_succeeds(by_id[device_id])
    step(api, deployment_id)
    assert get(api, deployment_id)["rollout"]["current_wave"] == 2
    for device_id in ("wv-4", "wv-5"):
        device_succeeds(by_id[device_id])
    step(api, deployment_id)
    read = get(api, deployment_id)
    assert read["status"] == "completed" and read["rollout"]["state"] == "finished"
    assert api.get("/devices/wv-5").json()["release_id"] == release_id

    opened = [
        data["wave"] for kind, _, data in events(api, deployment_id) if kind == "deployment.wave_opened"
    ]
    assert opened == [0, 1, 2]
    kinds = [kind for kind, _, _ in events(api, deployment_id, "deployment.")]
    assert kinds[0] == "deployment.created" and kinds[1] == "deployment.started"
    assert kinds[-1] == "deployment.completed" and kinds.count("deployment.completed") == 1
    # every device: waiting is where it starts; then pending (released), notified, ..., succeeded
    device_events = [(device, data["state"]) for kind, device, data in events(api, deployment_id, "device.")]
    assert [state for device, state in device_events if device == "wv-0"] == [
        "pending",
        "notified",
        "downloading",
        "installing",
        "succeeded",
    ]
    assert sum(1 for _, state in device_events if state == "pending") == 6


def test_forced_mode_is_in_the_poll_answer(api: Api) -> None:
    gateway = admitted(api, "forced-1")
    deploy(api, release(api), {"device_ids": [gateway.id]}, {"mode": "forced"})
    answer = api.client.get(POLL, headers=gateway.headers)
    assert answer.status_code == 200 and answer.json()["forced"] is True


def test_tag_waves_one_value_at_a_time(api: Api) -> None:
    for index, site in enumerate(["paris", "berlin", "berlin", "rome"]):
        api.device(f"tg-{index}", tags={"site": site, "fleet": "tg"})
    deployment_id = deploy(
        api, release(api), {"condition": "tags.fleet = 'tg'"}, {"waves": [{"tag": "site"}]}
    )
    assert states(api, deployment_id) == {
        "tg-1": ("pending", 0),  # berlin, paris, rome: sorted values
        "tg-2": ("pending", 0),
        "tg-0": ("waiting", 1),
        "tg-3": ("waiting", 2),
    }
    read = get(api, deployment_id)
    assert [w["name"] for w in read["rollout"]["waves"]] == [
        "site: berlin",
        "site: paris",
        "site: rome",
        "remainder",
    ]
    assert read["policy"]["waves"][0]["tag_values"] == ["berlin", "paris", "rome"]  # fixed at the start


def test_success_threshold_lets_a_wave_pass_or_halts_it(api: Api) -> None:
    release_id = release(api)
    lenient_ids = devices(api, "sl", 4)
    lenient = deploy(
        api,
        release_id,
        {"device_ids": lenient_ids},
        {"waves": [{"count": 2, "success_threshold": 50}]},
    )
    succeed(api, lenient, "sl-00")
    fail(api, lenient, "sl-01")
    step(api, lenient)
    assert get(api, lenient)["rollout"]["current_wave"] == 1  # 1 of 2 succeeded: 50% is enough

    strict_ids = devices(api, "ss", 4)
    strict = deploy(api, release_id, {"device_ids": strict_ids}, {"waves": [{"count": 2}]})
    succeed(api, strict, "ss-00")
    fail(api, strict, "ss-01")
    step(api, strict)
    read = get(api, strict)
    assert read["rollout"]["state"] == "halted" and read["status"] == "paused"
    assert "1 of 2 devices succeeded, below the 100% needed" in read["rollout"]["halted_reason"]
    assert in_state(api, strict, "waiting") == ["ss-02", "ss-03"]


# -- halting and rolling back -------------------------------------------------------------------


def test_error_threshold_halts_and_pauses_then_retry_goes_on(api: Api) -> None:
    ids = devices(api, "eh", 8)
    deployment_id = deploy(
        api,
        release(api),
        {"device_ids": ids},
        {"waves": [{"count": 4, "error_threshold": {"count": 2}}]},
    )
    fail(api, deployment_id, "eh-00")
    step(api, deployment_id)
    assert get(api, deployment_id)["rollout"]["state"] == "wave_open"  # one failure: below the threshold
    fail(api, deployment_id, "eh-01")
    step(api, deployment_id)
    read = get(api, deployment_id)
    assert read["rollout"]["state"] == "halted" and read["status"] == "paused"
    assert "2 devices failed" in read["rollout"]["halted_reason"]
    assert in_state(api, deployment_id, "waiting") == ["eh-04", "eh-05", "eh-06", "eh-07"]
    halted = [data for kind, _, data in events(api, deployment_id) if kind == "deployment.halted"]
    assert len(halted) == 1 and halted[0]["failed"] == 2

    refused = api.post(f"/deployments/{deployment_id}/resume")
    assert refused.status_code == 409 and "retry" in refused.json()["detail"]
    retried = api.post(f"/deployments/{deployment_id}/retry")
    assert retried.status_code == 200, retried.text
    body = retried.json()
    assert body["status"] == "active" and body["rollout"]["state"] == "wave_open"
    assert body["rollout"]["halted_reason"] is None
    assert in_state(api, deployment_id, "pending") == ["eh-00", "eh-01", "eh-02", "eh-03"]
    rows = api.get(f"/deployments/{deployment_id}/devices", params={"state": "pending"}).json()["items"]
    assert {row["device_id"]: row["attempts"] for row in rows}["eh-00"] == 1
    succeed(api, deployment_id, "eh-00", "eh-01", "eh-02", "eh-03")
    step(api, deployment_id)
    assert get(api, deployment_id)["rollout"]["current_wave"] == 1
    assert [
        data["devices"] for kind, _, data in events(api, deployment_id) if kind == "deployment.retried"
    ] == [2]


def test_rollback_failed_creates_a_rollback_deployment_for_exactly_the_failed_devices(api: Api) -> None:
    old = release(api)
    ids = devices(api, "rb", 6)
    deployment_id = deploy(
        api,
        release(api),
        {"device_ids": ids},
        {
            "waves": [{"count": 4, "error_threshold": {"count": 2}}],
            "rollback": {"on_error": "rollback_failed", "release_id": old},
        },
        priority=7,
    )
    succeed(api, deployment_id, "rb-00")
    fail(api, deployment_id, "rb-01", "rb-03")
    step(api, deployment_id)
    read = get(api, deployment_id)
    assert read["rollout"]["state"] == "halted" and read["status"] == "paused"
    found = api.get("/deployments", params={"label": f"fleetlift/rollback-of:{deployment_id}"}).json()[
        "items"
    ]
    assert len(found) == 1
    rollback = found[0]
    assert rollback["release_id"] == old and rollback["priority"] == 8
    assert rollback["parent_deployment_id"] == deployment_id and rollback["status"] == "active"
    assert states(api, rollback["id"]) == {"rb-01": ("pending", 0), "rb-03": ("pending", 0)}
    created = [data for kind, _, data in events(api, deployment_id) if kind == "deployment.rollback_created"]
    assert created == [{"rollback_deployment_id": rollback["id"], "devices": 2, "release_id": old}]
    step(api, deployment_id)  # stepping again changes nothing: still one rollback
    assert (
        len(
            api.get("/deployments", params={"label": f"fleetlift/rollback-of:{deployment_id}"}).json()[
                "items"
            ]
        )
        == 1
    )


def test_rollback_all_takes_every_released_device(api: Api) -> None:
    old = release(api)
    ids = devices(api, "ra", 6)
    deployment_id = deploy(
        api,
        release(api),
        {"device_ids": ids},
        {
            "waves": [{"count": 3, "error_threshold": {"count": 1}}],
            "rollback": {"on_error": "rollback_all", "release_id": old},
        },
    )
    succeed(api, deployment_id, "ra-00")
    fail(api, deployment_id, "ra-01")
    step(api, deployment_id)
    found = api.get("/deployments", params={"label": f"fleetlift/rollback-of:{deployment_id}"}).json()[
        "items"
    ]
    assert len(found) == 1
    assert sorted(states(api, found[0]["id"])) == ["ra-00", "ra-01", "ra-02"]  # wave 0, not the waiting ones


def test_a_rollback_release_must_exist(api: Api) -> None:
    api.device("rx-1")
    response = api.post(
        "/deployments",
        json={
            "name": "x",
            "release_id": release(api),
            "target": {"device_ids": ["rx-1"]},
            "policy": {"rollback": {"on_error": "rollback_failed", "release_id": "rel_missing"}},
        },
    )
    assert response.status_code == 400 and "rel_missing" in response.json()["detail"]
    no_release = api.post(
        "/deployments",
        json={
            "name": "x",
            "release_id": release(api),
            "target": {"device_ids": ["rx-1"]},
            "policy": {"rollback": {"on_error": "rollback_all"}},
        },
    )
    assert no_release.status_code == 400


# -- soak, approval, concurrency, windows, timeouts, dynamic --------------------------------------


def test_soak_holds_the_next_wave(api: Api) -> None:
    ids = devices(api, "sk", 3)
    deployment_id = deploy(
        api, release(api), {"device_ids": ids}, {"waves": [{"count": 1, "soak_seconds": 600}]}
    )
    succeed(api, deployment_id, "sk-00")
    now = datetime.now(UTC)
    step(api, deployment_id, now)
    rollout = get(api, deployment_id)["rollout"]
    assert rollout["state"] == "soaking" and rollout["soak_until"] is not None
    until = datetime.fromisoformat(rollout["soak_until"])
    step(api, deployment_id, until - timedelta(seconds=1))
    assert in_state(api, deployment_id, "waiting") == ["sk-01", "sk-02"]
    step(api, deployment_id, until + timedelta(seconds=1))
    assert get(api, deployment_id)["rollout"]["state"] == "wave_open"
    assert in_state(api, deployment_id, "pending") == ["sk-01", "sk-02"]
    soaks = [data for kind, _, data in events(api, deployment_id) if kind == "deployment.wave_soaking"]
    assert len(soaks) == 1 and soaks[0]["wave"] == 0


def test_approval_gates_open_only_when_an_operator_approves(api: Api) -> None:
    ids = devices(api, "ap", 3)
    deployment_id = deploy(
        api,
        release(api),
        {"device_ids": ids},
        {"waves": [{"count": 1, "requires_approval": True}, {"count": 1, "requires_approval": True}]},
    )
    read = get(api, deployment_id)
    assert read["rollout"]["state"] == "awaiting_approval" and in_state(api, deployment_id, "pending") == []
    assert api.post(f"/deployments/{deployment_id}/approve", role="viewer").status_code == 403
    approved = api.post(f"/deployments/{deployment_id}/approve", role="operator")
    assert approved.status_code == 200, approved.text
    assert approved.json()["rollout"]["approved_through"] == 0
    assert in_state(api, deployment_id, "pending") == ["ap-00"]
    assert api.post(f"/deployments/{deployment_id}/approve").status_code == 200  # wave 1, ahead of time
    assert api.post(f"/deployments/{deployment_id}/approve").status_code == 409  # the remainder has no gate
    succeed(api, deployment_id, "ap-00")
    step(api, deployment_id)
    assert in_state(api, deployment_id, "pending") == ["ap-01"]  # approved ahead: opened at once
    kinds = [kind for kind, _, _ in events(api, deployment_id, "deployment.")]
    assert kinds.count("deployment.awaiting_approval") == 1 and kinds.count("deployment.wave_approved") == 2


def test_an_approval_gate_waits_between_waves(api: Api) -> None:
    ids = devices(api, "ag", 2)
    deployment_id = deploy(
        api,
        release(api),
        {"device_ids": ids},
        {"waves": [{"count": 1}, {"count": 1, "requires_approval": True}]},
    )
    succeed(api, deployment_id, "ag-00")
    step(api, deployment_id)
    rollout = get(api, deployment_id)["rollout"]
    assert rollout["state"] == "awaiting_approval" and rollout["current_wave"] == 0
    assert in_state(api, deployment_id, "waiting") == ["ag-01"]
    assert api.post(f"/deployments/{deployment_id}/approve").json()["rollout"]["current_wave"] == 1
    assert in_state(api, deployment_id, "pending") == ["ag-01"]


def test_max_concurrent_is_never_exceeded(api: Api) -> None:
    ids = devices(api, "mc", 10)
    deployment_id = deploy(api, release(api), {"device_ids": ids}, {"max_concurrent": 3})
    done: list[str] = []
    for _ in range(10):
        in_flight = in_state(api, deployment_id, "pending")
        assert 0 < len(in_flight) <= 3
        assert len(in_flight) == min(3, len(ids) - len(done))
        succeed(api, deployment_id, in_flight[0])
        done.append(in_flight[0])
        step(api, deployment_id)
        if len(done) == len(ids):
            break
    assert get(api, deployment_id)["status"] == "completed"
    released = [d for kind, d, data in events(api, deployment_id, "device.") if data["state"] == "pending"]
    assert sorted(released) == ids  # each device released exactly once


def test_retried_devices_queue_for_slots_under_the_concurrency_limit(api: Api) -> None:
    ids = devices(api, "rq", 6)
    deployment_id = deploy(
        api,
        release(api),
        {"device_ids": ids},
        {"max_concurrent": 2, "waves": [{"count": 3}, {"percent": 100}]},
    )
    # Wave 0 (rq-00..02): two at a time; all three fail one by one.
    for _ in range(3):
        in_flight = in_state(api, deployment_id, "pending")
        assert 0 < len(in_flight) <= 2
        fail(api, deployment_id, in_flight[0])
        step(api, deployment_id)
    assert in_state(api, deployment_id, "failed") == ["rq-00", "rq-01", "rq-02"]
    retried = api.post(f"/deployments/{deployment_id}/retry")
    assert retried.status_code == 200, retried.text
    # Released within the limit: two now, the third waits for a slot.
    assert in_state(api, deployment_id, "pending") == ["rq-00", "rq-01"]
    assert in_state(api, deployment_id, "waiting")[:1] == ["rq-02"]
    succeed(api, deployment_id, "rq-00")
    step(api, deployment_id)
    assert in_state(api, deployment_id, "pending") == ["rq-01", "rq-02"]
    moves = [(d, data["state"]) for _, d, data in events(api, deployment_id, "device.") if d == "rq-02"]
    assert moves[-2:] == [("rq-02", "waiting"), ("rq-02", "pending")]  # queued, then released once


def _window(start: datetime, hours: float) -> str:
    end = start + timedelta(hours=hours)
    return f"{start:%H:%M}-{end:%H:%M}"


def test_a_closed_maintenance_window_releases_nothing_until_it_opens(api: Api) -> None:
    ids = devices(api, "mw", 2)
    now = datetime.now(UTC)
    opens = now + timedelta(hours=2)
    start, end = _window(opens, 1).split("-")
    policy = {
        "maintenance": {
            "windows": [
                {"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "start": start, "end": end}
            ]
        }
    }
    deployment_id = deploy(api, release(api), {"device_ids": ids}, policy)
    assert in_state(api, deployment_id, "waiting") == ids
    step(api, deployment_id, now + timedelta(minutes=30))
    assert in_state(api, deployment_id, "waiting") == ids
    step(api, deployment_id, opens + timedelta(minutes=30))
    assert in_state(api, deployment_id, "pending") == ids


def test_device_tag_windows_release_each_device_in_its_own_window(api: Api) -> None:
    now = datetime.now(UTC)
    opens = now + timedelta(hours=2)
    api.device("tw-open", tags={"fleet": "tw", "mw": f"daily {_window(opens, 1)} UTC"})
    api.device("tw-later", tags={"fleet": "tw", "mw": f"daily {_window(now + timedelta(hours=6), 1)} UTC"})
    api.device("tw-none", tags={"fleet": "tw"})
    api.device("tw-bad", tags={"fleet": "tw", "mw": "whenever"})
    deployment_id = deploy(
        api, release(api), {"condition": "tags.fleet = 'tw'"}, {"maintenance": {"tag": "mw"}}
    )
    assert in_state(api, deployment_id, "pending") == ["tw-none"]  # no window tag: no restriction
    step(api, deployment_id, opens + timedelta(minutes=10))
    assert in_state(api, deployment_id, "pending") == ["tw-none", "tw-open"]
    assert in_state(api, deployment_id, "waiting") == ["tw-bad", "tw-later"]  # unreadable text never opens


def test_silent_devices_time_out_and_count_as_failed(api: Api) -> None:
    ids = devices(api, "to", 2)
    deployment_id = deploy(api, release(api), {"device_ids": ids}, {"device_timeout_seconds": 600})
    report(api, deployment_id, "to-00", "downloading")
    step(api, deployment_id, datetime.now(UTC) + timedelta(seconds=300))
    assert in_state(api, deployment_id, "timed_out") == []
    step(api, deployment_id, datetime.now(UTC) + timedelta(seconds=700))
    assert in_state(api, deployment_id, "timed_out") == ids
    read = get(api, deployment_id)
    assert read["status"] == "failed" and read["rollout"]["waves"][0]["failed"] == 2
    timed = [
        (d, data) for kind, d, data in events(api, deployment_id, "device.") if data["state"] == "timed_out"
    ]
    assert sorted(d for d, _ in timed) == ids and timed[0][1]["detail"] == "no report for 600 s"


def test_dynamic_rollouts_take_in_devices_that_match_later(api: Api) -> None:
    api.device("dy-1", tags={"fleet": "dy"})
    deployment_id = deploy(api, release(api), {"condition": "tags.fleet = 'dy'"}, {"dynamic": True})
    static_id = deploy(api, release(api), {"condition": "tags.fleet = 'dy'"}, {})
    succeed(api, deployment_id, "dy-1")
    step(api, deployment_id)
    assert get(api, deployment_id)["rollout"]["state"] == "finished"
    api.device("dy-2", tags={"fleet": "dy"})
    reconciler = api.client.app.state.reconciler  # type: ignore[attr-defined]
    reconciler.run_once()  # a finished dynamic rollout is still among the candidates
    step(api, static_id)
    assert states(api, deployment_id)["dy-2"] == ("pending", 0)
    assert "dy-2" not in states(api, static_id)
    assert get(api, deployment_id)["rollout"]["state"] == "wave_open"
    joined = [data["state"] for kind, d, data in events(api, deployment_id, "device.") if d == "dy-2"]
    assert joined == ["waiting", "pending"]


# -- operator actions ----------------------------------------------------------------------------


def test_operator_actions_their_conflicts_and_the_audit_log(api: Api) -> None:
    ids = devices(api, "op", 3)
    release_id = release(api)
    deployment_id = deploy(api, release_id, {"device_ids": ids}, {"waves": [{"count": 1}]}, status="draft")
    path = f"/deployments/{deployment_id}"
    for action in ("pause", "resume", "retry", "approve"):
        assert api.post(f"{path}/{action}").status_code == 409, action
    assert api.post(f"{path}/start", headers={"If-Match": '"999"'}).status_code == 412
    started = api.post(f"{path}/start", role="operator")
    assert started.status_code == 200, started.text
    assert started.json()["status"] == "active" and started.headers["ETag"]
    assert states(api, deployment_id)["op-00"] == ("pending", 0)
    assert api.post(f"{path}/start").status_code == 409
    paused = api.post(f"{path}/pause", headers={"If-Match": started.headers["ETag"]})
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    assert api.post(f"{path}/pause").status_code == 409
    succeed(api, deployment_id, "op-00")
    step(api, deployment_id)
    assert get(api, deployment_id)["rollout"]["current_wave"] == 0  # paused: no wave opens
    resumed = api.post(f"{path}/resume")
    assert resumed.status_code == 200 and resumed.json()["rollout"]["current_wave"] == 1
    report(api, deployment_id, "op-01", "installing")
    cancelled = api.post(f"{path}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert states(api, deployment_id) == {
        "op-00": ("succeeded", 0),
        "op-01": ("installing", 1),  # in flight: it finishes
        "op-02": ("cancelled", 1),
    }
    assert api.post(f"{path}/cancel").status_code == 409
    assert api.post("/deployments/dep_missing/pause").status_code == 404
    audited = api.get("/audit", params={"resource_id": deployment_id, "limit": 100}).json()["items"]
    actions = {(entry["action"], entry["outcome"]) for entry in audited}
    for action in ("start", "pause", "resume", "cancel"):
        assert (f"deployments.{action}", "success") in actions, action
    for action in ("retry", "approve"):
        assert (f"deployments.{action}", "failed") in actions or (
            f"deployments.{action}",
            "denied",
        ) in actions
    kinds = [kind for kind, _, _ in events(api, deployment_id, "deployment.")]
    for kind in ("deployment.paused", "deployment.resumed", "deployment.cancelled"):
        assert kind in kinds


def test_a_scheduled_deployment_starts_now_when_asked(api: Api) -> None:
    ids = devices(api, "sc", 1)
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    deployment_id = deploy(api, release(api), {"device_ids": ids}, {}, start_at=later)
    assert get(api, deployment_id)["status"] == "scheduled"
    assert states(api, deployment_id) == {"sc-00": ("waiting", 0)}
    started = api.post(f"/deployments/{deployment_id}/start")
    assert started.status_code == 200 and started.json()["status"] == "active"
    assert states(api, deployment_id) == {"sc-00": ("pending", 0)}


def test_the_policy_changes_only_while_a_draft(api: Api) -> None:
    ids = devices(api, "pd", 2)
    release_id = release(api)
    deployment_id = deploy(api, release_id, {"device_ids": ids}, {}, status="draft")
    body = {"name": "rollout", "release_id": release_id, "target": {"device_ids": ids}, "status": "draft"}
    edited = api.put(f"/deployments/{deployment_id}", json={**body, "policy": {"max_concurrent": 1}})
    assert edited.status_code == 200 and edited.json()["policy"]["max_concurrent"] == 1
    assert (
        api.put(
            f"/deployments/{deployment_id}", json={**body, "policy": {"max_concurrent": 1}}, role="operator"
        ).status_code
        == 200
    )
    refused = api.put(
        f"/deployments/{deployment_id}", json={**body, "policy": {"max_concurrent": 2}}, role="operator"
    )
    assert refused.status_code == 403  # a policy change is authoring
    started = api.put(
        f"/deployments/{deployment_id}", json={**body, "status": "active"}
    )  # policy omitted: kept
    assert started.status_code == 200 and started.json()["policy"]["max_concurrent"] == 1
    assert len(in_state(api, deployment_id, "pending")) == 1
    changed = api.put(f"/deployments/{deployment_id}", json={**body, "status": "active", "policy": {}})
    assert changed.status_code == 409
    invalid = api.post(
        "/deployments",
        json={**body, "status": "active", "policy": {"waves": [{"percent": 10, "count": 3}]}},
    )
    assert invalid.status_code == 400


def test_devices_released_by_a_request_are_told_through_the_channel(api: Api) -> None:
    reconciler = api.client.app.state.reconciler  # type: ignore[attr-defined]
    channel, original = MemoryChannel(), reconciler.channel
    reconciler.channel = channel
    try:
        ids = devices(api, "ch", 3)
        deployment_id = deploy(
            api, release(api), {"device_ids": ids}, {"waves": [{"count": 1}]}, status="draft"
        )
        assert api.post(f"/deployments/{deployment_id}/start").status_code == 200
        deadline = time.monotonic() + 5
        while not channel.devices(api.tenant) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert channel.devices(api.tenant) == ["ch-00"]  # after the commit; the waiting ones not
    finally:
        reconciler.channel = original


def test_the_empty_policy_fails_a_deployment_without_halting_it(api: Api) -> None:
    ids = devices(api, "ep", 2)
    deployment_id = deploy(api, release(api), {"device_ids": ids}, {})
    succeed(api, deployment_id, "ep-00")
    fail(api, deployment_id, "ep-01")
    step(api, deployment_id)
    read = get(api, deployment_id)
    assert read["status"] == "failed" and read["rollout"]["state"] == "finished"
    kinds = [kind for kind, _, _ in events(api, deployment_id, "deployment.")]
    assert "deployment.failed" in kinds and "deployment.halted" not in kinds
