"""The IoT Hub API's refusals and secrets: validation, 404/409/412, permissions, and a connection string
that never comes back out (answers, logs, audit log)."""

from __future__ import annotations

import base64
import logging
import uuid
from typing import Any

import pytest

from ..iothub_emulator import IotHubEmulator
from .conftest import Api

KEY = base64.b64encode(b"an-iothub-policy-key-that-is-secret").decode()


def _connection(host: str = "contoso.azure-devices.net", key: str = KEY) -> str:
    return f"HostName={host};SharedAccessKeyName=iothubowner;SharedAccessKey={key}"


def _hub(api: Api, **overrides: Any) -> dict[str, Any]:
    body = {
        "name": f"hub-{uuid.uuid4().hex[:6]}",
        "connection_string": _connection(),
        "sync_interval_seconds": 0,
    }
    body.update(overrides)
    response = api.post("/iothub/hubs", json=body)
    assert response.status_code == 201, response.text
    assert response.headers["ETag"]
    created: dict[str, Any] = response.json()
    return created


def test_bad_connection_strings_are_400_without_echo(api: Api) -> None:
    secret = "c2VjcmV0LXZhbHVl!!not-base64"
    cases = [
        f"HostName=a.azure-devices.net;SharedAccessKeyName=owner;SharedAccessKey={secret}",
        f"HostName=a.azure-devices.net;SharedAccessKeyName=owner;Sharedaccesskeey={secret}",
        f"HostName=a.azure-devices.net;DeviceId=d1;SharedAccessKey={secret}",
        "just some text",
    ]
    for text in cases:
        response = api.post("/iothub/hubs", json={"name": "bad", "connection_string": text})
        assert response.status_code == 400, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert secret not in response.text and "c2VjcmV0" not in response.text
    not_azure = api.post(
        "/iothub/hubs", json={"name": "x", "connection_string": _connection("hub.example.com")}
    )
    assert not_azure.status_code == 400 and "azure-devices.net" in not_azure.json()["detail"]
    assert KEY not in not_azure.text
    assert api.post("/iothub/hubs", json={"name": "x", "auth": "entra"}).status_code == 400
    both = {
        "name": "x",
        "auth": "entra",
        "host_name": "a.azure-devices.net",
        "connection_string": _connection(),
    }
    assert api.post("/iothub/hubs", json=both).status_code == 400


def test_hub_lifecycle_404_409_412(api: Api) -> None:
    hub = _hub(api, name="main")
    assert hub["host_name"] == "contoso.azure-devices.net" and hub["key_name"] == "iothubowner"
    assert hub["auth"] == "sas" and hub["last_sync"]["status"] is None
    assert "connection_string" not in hub and KEY not in str(hub)
    assert (
        api.post("/iothub/hubs", json={"name": "main", "connection_string": _connection()}).status_code == 409
    )
    entra = _hub(api, name="entra", connection_string=None, auth="entra", host_name="other.azure-devices.net")
    assert entra["auth"] == "entra" and entra["key_name"] is None

    got = api.get(f"/iothub/hubs/{hub['id']}", role="viewer")
    assert got.status_code == 200 and got.json()["id"] == hub["id"]
    listed = api.get("/iothub/hubs", role="viewer").json()
    assert {item["id"] for item in listed["items"]} == {hub["id"], entra["id"]}
    assert api.get("/iothub/hubs/hub_missing").status_code == 404
    assert api.get("/iothub/deployments/dep_missing").status_code == 404
    assert api.post("/iothub/hubs/hub_missing/sync").status_code == 404

    stale = api.delete(f"/iothub/hubs/{hub['id']}", headers={"If-Match": '"999"'})
    assert stale.status_code == 412
    assert (
        api.delete(f"/iothub/hubs/{hub['id']}", headers={"If-Match": got.headers["ETag"]}).status_code == 204
    )
    assert api.get(f"/iothub/hubs/{hub['id']}").status_code == 404


def _patch(api: Api, hub_id: str, body: Any, **kw: Any) -> Any:
    return api.call("PATCH", f"/iothub/hubs/{hub_id}", json=body, **kw)


def test_a_hub_is_changed_and_its_rotated_key_stored_sealed(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    hub = _hub(api, name="before", sync_condition="tags.env = 'prod'", sync_interval_seconds=300)
    etag = api.get(f"/iothub/hubs/{hub['id']}").headers["ETag"]
    rotated = base64.b64encode(b"the regenerated iothub policy key!").decode()
    new_connection = _connection(key=rotated).replace("iothubowner", "service")
    changed = _patch(
        api,
        hub["id"],
        {"name": "after", "connection_string": new_connection, "sync_condition": None},
        headers={"If-Match": etag},
    )
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert (body["name"], body["key_name"], body["sync_condition"]) == ("after", "service", None)
    assert body["sync_interval_seconds"] == 300 and body["host_name"] == hub["host_name"]  # left as it was
    assert changed.headers["ETag"] != etag
    assert _patch(api, hub["id"], {"name": "again"}, headers={"If-Match": etag}).status_code == 412
    assert _patch(api, hub["id"], {"sync_interval_seconds": 60}).json()["sync_interval_seconds"] == 60
    audit = api.get("/audit", params={"limit": 200}).text
    assert "iothub.hubs.update" in audit
    assert "iothub" in caplog.text  # the logs were heard
    for text in (caplog.text, audit, changed.text):
        assert rotated not in text and KEY not in text and "SharedAccessKey=" not in text


def test_a_hub_change_that_cannot_be_is_refused(api: Api) -> None:
    hub = _hub(api)
    other = _hub(api)
    entra = _hub(api, connection_string=None, auth="entra", host_name="entra-hub.azure-devices.net")
    cases: list[tuple[str, Any, int, str]] = [
        (hub["id"], {}, 400, "at least one"),
        (hub["id"], {"name": None}, 400, "cannot be null"),
        (hub["id"], {"connection_string": None}, 400, "cannot be null"),
        (hub["id"], {"host_name": "x.azure-devices.net"}, 400, "host_name"),
        (hub["id"], {"sync_interval_seconds": -1}, 400, "sync_interval_seconds"),
        (hub["id"], {"connection_string": "HostName=contoso.azure-devices.net"}, 400, "SharedAccessKey"),
        (hub["id"], {"connection_string": _connection("elsewhere.azure-devices.net")}, 400, "not this hub"),
        (entra["id"], {"connection_string": _connection("entra-hub.azure-devices.net")}, 400, "Entra ID"),
        (hub["id"], {"name": other["name"]}, 409, "exists already"),
        ("hub_missing", {"name": "x"}, 404, "hub_missing"),
    ]
    for hub_id, body, status, says in cases:
        refused = _patch(api, hub_id, body)
        assert refused.status_code == status, (body, refused.text)
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert says in refused.text, (body, refused.text)
        assert KEY not in refused.text
    assert _patch(api, hub["id"], {"name": "renamed"}, role="operator").status_code == 403
    assert api.get(f"/iothub/hubs/{hub['id']}").json()["name"] == hub["name"]  # nothing changed


def test_permissions(api: Api) -> None:
    body = {"name": "perm", "connection_string": _connection()}
    for role in ("viewer", "developer", "operator"):
        refused = api.post("/iothub/hubs", json=body, role=role)
        assert refused.status_code == 403, role
        assert KEY not in refused.text
    hub = _hub(api)
    assert api.delete(f"/iothub/hubs/{hub['id']}", role="operator").status_code == 403
    assert api.post(f"/iothub/hubs/{hub['id']}/sync", role="viewer").status_code == 403
    trigger = {"deployment_id": "dep_missing", "device_ids": ["d1"]}
    assert (
        api.post(f"/iothub/hubs/{hub['id']}/devices/update", json=trigger, role="developer").status_code
        == 403
    )


def test_secrets_never_answered_logged_or_audited(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    hub = _hub(api)
    api.get(f"/iothub/hubs/{hub['id']}")
    api.post("/iothub/hubs", json={"name": hub["name"], "connection_string": _connection()})  # a refusal too
    audit = api.get("/audit", params={"limit": 200})
    assert audit.status_code == 200
    assert "iothub.hubs.create" in audit.text
    for text in (caplog.text, audit.text, str(hub)):
        assert KEY not in text
        assert "SharedAccessKey=" not in text


def _container_release(api: Api) -> dict[str, Any]:
    release = api.release(
        payloads=[
            {"type": "container", "name": "app", "image": "registry.invalid/acme/app:1@sha256:" + "b" * 64}
        ],
        device_types=[],
        architectures=[],
    )
    reason = {"reason": "accepted for the IoT Hub API test"}
    overridden = api.post(f"/releases/{release['id']}/override", json=reason)
    assert overridden.status_code == 200, overridden.text
    return release


def test_deployments_through_a_hub_are_checked(api: Api) -> None:
    hub = _hub(api)
    containers = _container_release(api)
    files = api.release()
    base = {"name": "edge", "target": {"condition": "tags.env = 'prod'"}, "status": "draft"}

    not_containers = api.post(
        "/deployments", json={**base, "release_id": files["id"], "iothub": {"hub_id": hub["id"]}}
    )
    assert not_containers.status_code == 400 and "container" in not_containers.json()["detail"]
    waves = {"waves": [{"percent": 10}]}
    with_waves = api.post(
        "/deployments",
        json={**base, "release_id": containers["id"], "iothub": {"hub_id": hub["id"]}, "policy": waves},
    )
    assert with_waves.status_code == 400 and "rollout policy" in with_waves.json()["detail"]
    unknown = api.post(
        "/deployments", json={**base, "release_id": containers["id"], "iothub": {"hub_id": "hub_x"}}
    )
    assert unknown.status_code == 400

    draft = api.post(
        "/deployments", json={**base, "release_id": containers["id"], "iothub": {"hub_id": hub["id"]}}
    )
    assert draft.status_code == 201, draft.text
    delivery = api.get(f"/iothub/deployments/{draft.json()['id']}", role="viewer").json()
    assert delivery["state"] == "queued" and delivery["revision"] == 1
    assert delivery["configuration_id"].startswith("fleetlift-dep_")

    # The hub delivers a live deployment: forgetting it needs force.
    in_use = api.delete(f"/iothub/hubs/{hub['id']}")
    assert in_use.status_code == 409 and in_use.json()["active_deliveries"] == 1
    assert api.delete(f"/iothub/hubs/{hub['id']}", params={"force": "true"}).status_code == 204


def test_throttled_hub_is_503_with_retry_after(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    emulator = IotHubEmulator(config_ops_per_minute=None)
    clients = api.client.app.state.iothub_clients  # type: ignore[attr-defined]
    monkeypatch.setattr(clients, "transport", emulator.transport())
    hub = _hub(api, connection_string=emulator.connection_string)
    # Longer than the client waits by itself: the caller hears when to come back.
    emulator.throttle(1, retry_after=200, path_prefix="/devices/query")
    response = api.post(f"/iothub/hubs/{hub['id']}/sync")
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == "200"
    assert response.json()["hub_code"] == "ThrottlingException"
    assert emulator.key not in response.text
    again = api.post(f"/iothub/hubs/{hub['id']}/sync")
    assert again.status_code == 200 and again.json()["synced"] == 0
    assert api.delete(f"/iothub/hubs/{hub['id']}").status_code == 204


def test_the_worker_runs_in_nested_lifespans_of_one_app(tmp_path: Any) -> None:
    """Test clients run an app's lifespan on event loops of their own, sometimes nested: each
    lifespan's worker loop must wait on its own loop's primitives and stop on its own."""
    import time

    from fastapi.testclient import TestClient

    from fleetlift.app import create_app
    from fleetlift.config import Settings
    from fleetlift.migrate import upgrade

    settings = Settings(data_dir=tmp_path, log_level="CRITICAL", iothub_worker_interval_seconds=0.02)
    upgrade(settings.resolved_database_url)
    app = create_app(settings)
    worker = app.state.iothub_worker
    with TestClient(app):
        time.sleep(0.1)
        with TestClient(app):
            time.sleep(0.2)  # both loops pass several times meanwhile
        passes = worker.passes
        time.sleep(0.2)
        assert worker.passes > passes  # the outer lifespan's worker goes on after the inner one stopped
    # Leaving both raised nothing (before: "bound to a different event loop" from the outer worker).
