"""Deployments through the HTTP API, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fleetlift.auth import Role
from fleetlift.db import transaction
from fleetlift.deployments import service
from fleetlift.deployments.rules import DeviceUpdateState

from .conftest import Api


def fleet(api: Api) -> dict[str, str]:
    """A release and five devices: three prod (one on the release already), one dev, one misfit."""
    release = api.release()
    api.device("gw-1", tags={"env": "prod", "site": "berlin"})
    api.device("gw-2", tags={"env": "prod", "site": "paris"})
    api.device("gw-3", tags={"env": "prod", "site": "paris"}, release_id=release["id"])
    api.device("gw-4", tags={"env": "dev"})
    api.device("gw-5", tags={"env": "prod"}, device_type="gw-x2")
    return {"release": release["id"]}


def create(api: Api, release_id: str, **overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "name": "to prod",
        "release_id": release_id,
        "target": {"condition": "tags.env = 'prod'"},
    }
    body.update(overrides)
    response = api.post("/deployments", json=body)
    assert response.status_code == 201, response.text
    assert response.headers["ETag"]
    assert response.headers["Location"].endswith(response.json()["id"])
    return response.json()


def test_an_active_deployment_is_assigned_its_matching_compatible_devices(api: Api) -> None:
    ids = fleet(api)
    deployment = create(api, ids["release"], priority=5, labels={"team": "edge"})
    assert deployment["status"] == "active"
    assert deployment["device_counts"] == {"pending": 2, "already_installed": 1}
    assert deployment["total_devices"] == 3
    listed = api.get(f"/deployments/{deployment['id']}/devices").json()
    assert [(d["device_id"], d["state"]) for d in listed["items"]] == [
        ("gw-1", "pending"),
        ("gw-2", "pending"),
        ("gw-3", "already_installed"),
    ]
    assert listed["next_cursor"] is None


def test_device_list_of_a_deployment_pages_with_a_cursor(api: Api) -> None:
    ids = fleet(api)
    deployment = create(api, ids["release"])
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 1} | ({"cursor": cursor} if cursor else {})
        page = api.get(f"/deployments/{deployment['id']}/devices", params=params).json()
        seen += [row["device_id"] for row in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["gw-1", "gw-2", "gw-3"]
    filtered = api.get(f"/deployments/{deployment['id']}/devices", params={"state": "pending"}).json()
    assert [row["device_id"] for row in filtered["items"]] == ["gw-1", "gw-2"]


def test_explicit_ids_and_condition_are_a_union(api: Api) -> None:
    ids = fleet(api)
    api.device("gw-9", tags={"env": "lab"})
    deployment = create(
        api, ids["release"], target={"device_ids": ["gw-9"], "condition": "tags.site = 'berlin'"}
    )
    rows = api.get(f"/deployments/{deployment['id']}/devices").json()["items"]
    assert {r["device_id"] for r in rows} == {"gw-1", "gw-9"}


def test_explicit_incompatible_device_is_refused_with_reason(api: Api) -> None:
    ids = fleet(api)
    response = api.post(
        "/deployments",
        json={"name": "x", "release_id": ids["release"], "target": {"device_ids": ["gw-1", "gw-5"]}},
    )
    assert response.status_code == 409
    problem = response.json()
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "gw-5" in problem["detail"] and "gw-x2" in problem["detail"]
    assert problem["devices"] == [
        {"device_id": "gw-5", "reason": "incompatible_device_type", "detail": problem["devices"][0]["detail"]}
    ]


def test_unknown_explicit_device_and_release_are_400(api: Api) -> None:
    ids = fleet(api)
    unknown_device = api.post(
        "/deployments", json={"name": "x", "release_id": ids["release"], "target": {"device_ids": ["nope"]}}
    )
    assert unknown_device.status_code == 400
    assert "nope" in unknown_device.json()["detail"]
    unknown_release = api.post(
        "/deployments", json={"name": "x", "release_id": "rel_x", "target": {"condition": "*"}}
    )
    assert unknown_release.status_code == 400
    assert unknown_release.json()["errors"][0]["location"] == "body.release_id"


def test_condition_syntax_error_names_the_position(api: Api) -> None:
    ids = fleet(api)
    response = api.post(
        "/deployments",
        json={"name": "x", "release_id": ids["release"], "target": {"condition": "tags.env = 'prod' AND"}},
    )
    assert response.status_code == 400
    problem = response.json()
    assert problem["type"] == "urn:fleetlift:problem:invalid-target-condition"
    assert problem["position"] == len("tags.env = 'prod' AND")
    assert "position" in problem["detail"]


def test_a_target_is_required(api: Api) -> None:
    ids = fleet(api)
    response = api.post("/deployments", json={"name": "x", "release_id": ids["release"], "target": {}})
    assert response.status_code == 400


def test_draft_then_start_assigns_devices(api: Api) -> None:
    ids = fleet(api)
    draft = create(api, ids["release"], status="draft")
    assert draft["status"] == "draft" and draft["total_devices"] == 0
    body = {
        "name": "renamed",
        "release_id": ids["release"],
        "target": {"condition": "tags.site = 'paris'"},
        "priority": 1,
        "labels": {},
        "status": "draft",
    }
    edited = api.put(f"/deployments/{draft['id']}", json=body)
    assert edited.status_code == 200, edited.text
    started = api.put(
        f"/deployments/{draft['id']}",
        json=body | {"status": "active"},
        headers={"If-Match": edited.headers["ETag"]},
    )
    assert started.status_code == 200, started.text
    assert started.json()["device_counts"] == {"pending": 1, "already_installed": 1}
    assert started.headers["ETag"] != edited.headers["ETag"]


def test_stale_if_match_is_412_and_changes_nothing(api: Api) -> None:
    ids = fleet(api)
    deployment = create(api, ids["release"])
    body = {
        "name": "to prod",
        "release_id": ids["release"],
        "target": {"condition": "tags.env = 'prod'"},
        "status": "paused",
    }
    stale = api.put(f"/deployments/{deployment['id']}", json=body, headers={"If-Match": '"999"'})
    assert stale.status_code == 412
    assert api.get(f"/deployments/{deployment['id']}").json()["status"] == "active"
    assert (
        api.delete(
            f"/deployments/{deployment['id']}", params={"force": True}, headers={"If-Match": '"999"'}
        ).status_code
        == 412
    )


def test_release_and_target_are_frozen_once_active(api: Api) -> None:
    ids = fleet(api)
    deployment = create(api, ids["release"])
    body = {"name": "to prod", "release_id": ids["release"], "target": {"condition": "*"}, "status": "active"}
    response = api.put(f"/deployments/{deployment['id']}", json=body)
    assert response.status_code == 409
    assert "draft" in response.json()["detail"]


def test_pause_resume_cancel(api: Api) -> None:
    ids = fleet(api)
    deployment = create(api, ids["release"])
    body = {"name": "to prod", "release_id": ids["release"], "target": {"condition": "tags.env = 'prod'"}}
    assert (
        api.put(f"/deployments/{deployment['id']}", json=body | {"status": "paused"}).json()["status"]
        == "paused"
    )
    assert (
        api.put(f"/deployments/{deployment['id']}", json=body | {"status": "active"}).json()["status"]
        == "active"
    )
    cancelled = api.put(f"/deployments/{deployment['id']}", json=body | {"status": "cancelled"}).json()
    assert cancelled["status"] == "cancelled"
    assert cancelled["device_counts"] == {"cancelled": 2, "already_installed": 1}
    back = api.put(f"/deployments/{deployment['id']}", json=body | {"status": "active"})
    assert back.status_code == 409


def test_scheduled_deployment(api: Api) -> None:
    ids = fleet(api)
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    deployment = create(api, ids["release"], start_at=later)
    assert deployment["status"] == "scheduled"
    naive = api.post(
        "/deployments",
        json={
            "name": "x",
            "release_id": ids["release"],
            "target": {"condition": "*"},
            "start_at": "2030-01-01T00:00:00",
        },
    )
    assert naive.status_code == 400


def test_deleting_an_active_deployment_needs_force_and_keeps_history(api: Api) -> None:
    ids = fleet(api)
    deployment = create(api, ids["release"])
    refused = api.delete(f"/deployments/{deployment['id']}")
    assert refused.status_code == 409
    assert "force" in refused.json()["detail"]
    assert api.delete(f"/deployments/{deployment['id']}", params={"force": True}).status_code == 204
    assert api.get(f"/deployments/{deployment['id']}").status_code == 404
    assert deployment["id"] not in [d["id"] for d in api.get("/deployments").json()["items"]]
    history = api.get("/devices/gw-1/deployments").json()
    assert history[0]["deployment_id"] == deployment["id"]
    assert history[0]["deleted"] is True
    assert history[0]["state"] == "cancelled"


def test_a_draft_can_be_deleted_without_force(api: Api) -> None:
    ids = fleet(api)
    draft = create(api, ids["release"], status="draft")
    assert api.delete(f"/deployments/{draft['id']}").status_code == 204


def test_list_filters_by_status_release_and_label(api: Api) -> None:
    ids = fleet(api)
    other = api.release()
    active = create(api, ids["release"], labels={"team": "edge"})
    draft = create(api, other["id"], status="draft", labels={"team": "core"})
    done = create(api, ids["release"], target={"device_ids": ["gw-3"]})  # already installed: completed

    def listed(**params: object) -> list[str]:
        response = api.get("/deployments", params=params)
        assert response.status_code == 200, response.text
        return [d["id"] for d in response.json()["items"]]

    assert listed() == [done["id"], draft["id"], active["id"]]
    assert listed(status="active") == [active["id"]]
    assert listed(status="draft") == [draft["id"]]
    assert listed(status="completed") == [done["id"]]
    assert listed(status="failed") == []
    assert listed(release_id=other["id"]) == [draft["id"]]
    assert listed(label="team:edge") == [active["id"]]
    assert api.get("/deployments", params={"label": "nocolon"}).status_code == 400
    assert api.get("/deployments", params={"status": "bogus"}).status_code == 400
    first = api.get("/deployments", params={"limit": 2}).json()
    second = api.get("/deployments", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [d["id"] for d in first["items"] + second["items"]] == [done["id"], draft["id"], active["id"]]
    assert api.get("/deployments", params={"cursor": "garbage!"}).status_code == 400


def test_status_follows_device_reports(api: Api) -> None:
    ids = fleet(api)
    deployment = create(api, ids["release"])
    sessions = api.client.app.state.sessions  # type: ignore[attr-defined]
    for device, states in {
        "gw-1": ["downloading", "installing", "succeeded"],
        "gw-2": ["downloading", "installing", "rolled_back"],
    }.items():
        for state in states:
            with transaction(sessions) as session:
                service.record_device_report(
                    session=session,
                    tenant_id=api.tenant,
                    deployment_id=str(deployment["id"]),
                    device_id=device,
                    state=DeviceUpdateState(state),
                )
    read = api.get(f"/deployments/{deployment['id']}").json()
    assert read["status"] == "failed"
    assert read["device_counts"] == {"succeeded": 1, "rolled_back": 1, "already_installed": 1}
    assert api.get("/devices/gw-1").json()["release_id"] == ids["release"]
    assert api.get("/devices/gw-2").json()["release_id"] is None
    assert [d["id"] for d in api.get("/deployments", params={"status": "failed"}).json()["items"]] == [
        deployment["id"]
    ]


def test_overlapping_deployments_device_follows_highest_priority_then_newest(api: Api) -> None:
    ids = fleet(api)
    low = create(api, ids["release"], priority=1)
    high = create(api, ids["release"], priority=10, target={"device_ids": ["gw-1"]})
    newer_equal = create(api, ids["release"], priority=10, target={"device_ids": ["gw-1"]})
    history = api.get("/devices/gw-1/deployments").json()
    effective = [row["deployment_id"] for row in history if row["effective"]]
    assert effective == [newer_equal["id"]]
    assert {row["deployment_id"] for row in history} == {low["id"], high["id"], newer_equal["id"]}
    assert [
        row["deployment_id"] for row in api.get("/devices/gw-2/deployments").json() if row["effective"]
    ] == [low["id"]]


def test_tenants_never_see_each_other(api: Api) -> None:
    ids = fleet(api)
    deployment = create(api, ids["release"])
    stranger = api.mint("eve", frozenset({Role.ADMIN}), timedelta(minutes=5), tenant_id="default")
    headers = {"Authorization": f"Bearer {stranger}"}
    assert api.client.get(f"/api/v1/deployments/{deployment['id']}", headers=headers).status_code == 404
    assert api.client.get("/api/v1/devices/gw-1", headers=headers).status_code == 404
    assert api.client.get(f"/api/v1/releases/{ids['release']}", headers=headers).status_code == 404
