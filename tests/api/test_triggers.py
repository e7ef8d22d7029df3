"""Update triggers: one device, and a batch with explicit per-device answers."""

from __future__ import annotations

from .conftest import Api


def setup_fleet(api: Api) -> str:
    release = api.release()
    api.device("gw-ok", tags={"site": "a"})
    api.device("gw-ok2", tags={"site": "a"})
    api.device("gw-type", device_type="other", tags={"site": "a"})
    api.device("gw-arch", architecture="armv7", tags={"site": "a"})
    api.device("gw-on", release_id=release["id"], tags={"site": "a"})
    api.device("gw-pending", status="pending", tags={"site": "a"})
    return str(release["id"])


def test_single_device_update(api: Api) -> None:
    release = setup_fleet(api)
    response = api.post("/devices/gw-ok/update", json={"release_id": release})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["device_id"] == "gw-ok" and body["state"] == "pending"
    deployment = api.get(f"/deployments/{body['deployment_id']}").json()
    assert deployment["target"]["device_ids"] == ["gw-ok"]
    assert deployment["labels"] == {"fleetlift/trigger": "manual"}
    listed = api.get("/deployments", params={"label": "fleetlift/trigger:manual"}).json()["items"]
    assert [d["id"] for d in listed] == [body["deployment_id"]]
    assert api.get("/deployments", params={"label": "fleetlift/trigger:other"}).json()["items"] == []
    assert deployment["device_counts"] == {"pending": 1}


def test_single_device_refusals(api: Api) -> None:
    release = setup_fleet(api)
    unknown = api.post("/devices/nope/update", json={"release_id": release})
    assert unknown.status_code == 404
    incompatible = api.post("/devices/gw-type/update", json={"release_id": release})
    assert incompatible.status_code == 409
    assert incompatible.json()["reason"] == "incompatible_device_type"
    assert "device type 'other'" in incompatible.json()["detail"]
    arch = api.post("/devices/gw-arch/update", json={"release_id": release})
    assert arch.json()["reason"] == "incompatible_architecture"
    already = api.post("/devices/gw-on/update", json={"release_id": release})
    assert already.status_code == 409 and already.json()["reason"] == "already_on_release"
    pending = api.post("/devices/gw-pending/update", json={"release_id": release})
    assert pending.status_code == 409 and pending.json()["reason"] == "device_not_accepted"
    bad_release = api.post("/devices/gw-ok/update", json={"release_id": "rel_missing"})
    assert bad_release.status_code == 400
    assert api.get("/deployments").json()["items"] == []


def test_batch_by_ids_reports_each_device(api: Api) -> None:
    release = setup_fleet(api)
    response = api.post(
        "/devices/update",
        json={
            "release_id": release,
            "device_ids": ["gw-ok", "gw-type", "ghost", "gw-on", "gw-ok2", "gw-arch"],
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["accepted_count"] == 2 and body["rejected_count"] == 4
    answers = {r["device_id"]: (r["accepted"], r["reason"]) for r in body["results"]}
    assert answers == {
        "gw-ok": (True, None),
        "gw-ok2": (True, None),
        "gw-type": (False, "incompatible_device_type"),
        "gw-arch": (False, "incompatible_architecture"),
        "ghost": (False, "unknown_device"),
        "gw-on": (False, "already_on_release"),
    }
    rows = api.get(f"/deployments/{body['deployment_id']}/devices").json()["items"]
    assert [r["device_id"] for r in rows] == ["gw-ok", "gw-ok2"]


def test_batch_by_condition_lists_refusals_and_assigns_the_rest(api: Api) -> None:
    release = setup_fleet(api)
    api.device("gw-elsewhere", tags={"site": "b"})
    body = api.post("/devices/update", json={"release_id": release, "condition": "tags.site = 'a'"}).json()
    assert body["accepted_count"] == 2
    assert {(r["device_id"], r["reason"]) for r in body["results"]} == {
        ("gw-type", "incompatible_device_type"),
        ("gw-arch", "incompatible_architecture"),
        ("gw-on", "already_on_release"),
        ("gw-pending", "device_not_accepted"),
    }
    rows = api.get(f"/deployments/{body['deployment_id']}/devices").json()["items"]
    assert [r["device_id"] for r in rows] == ["gw-ok", "gw-ok2"]


def test_batch_where_nothing_is_accepted_creates_no_deployment(api: Api) -> None:
    release = setup_fleet(api)
    body = api.post("/devices/update", json={"release_id": release, "device_ids": ["gw-on", "ghost"]}).json()
    assert body["deployment_id"] is None
    assert body["accepted_count"] == 0 and body["rejected_count"] == 2


def test_batch_needs_devices_or_condition(api: Api) -> None:
    release = setup_fleet(api)
    assert api.post("/devices/update", json={"release_id": release}).status_code == 400
    bad = api.post("/devices/update", json={"release_id": release, "condition": "tags.site = "})
    assert bad.status_code == 400 and "position" in bad.json()
