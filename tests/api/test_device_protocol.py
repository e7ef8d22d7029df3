"""The device protocol: poll for the next update (ETag, 304, long poll), download with the signed
link, report progress through the state machine."""

from __future__ import annotations

import threading
import time
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from .conftest import Api
from .test_device_admission import auth_request


def admitted_device(api: Api, serial: str) -> tuple[str, dict[str, str]]:
    key = ed25519.Ed25519PrivateKey.generate()
    device_id = auth_request(api, key, {"serial": serial}).json()["device_id"]
    api.post(f"/devices/{device_id}/accept")
    token = auth_request(api, key, {"serial": serial}).json()["token"]
    return device_id, {"Authorization": f"Bearer {token}"}


def poll(api: Api, headers: dict[str, str], **params: Any) -> Any:
    return api.client.get("/api/device/v1/deployments/next", headers=headers, params=params)


def test_poll_download_and_report(api: Api) -> None:
    device_id, headers = admitted_device(api, "P-1")
    nothing = poll(api, headers)
    assert nothing.status_code == 204 and nothing.headers["X-Fleetlift-Poll-Interval"] == "60"
    content = b"firmware for the protocol test" * 500
    artifact = api.artifact(content, name="fw.bin", version="p1")
    release = api.release(payloads=[{"type": "file", "artifact_id": artifact["id"]}], device_types=[])
    deployment = api.post(
        "/deployments", json={"name": "p", "release_id": release["id"], "target": {"device_ids": [device_id]}}
    ).json()
    answer = poll(api, headers)
    assert answer.status_code == 200, answer.text
    instructions = answer.json()
    assert instructions["deployment_id"] == deployment["id"] and instructions["state"] == "notified"
    file = instructions["files"][0]
    assert file["sha256"] == artifact["sha256"] and file["size"] == len(content)
    assert file["tuf_target"] == f"{artifact['id']}/fw.bin"
    assert api.client.get(file["url"]).content == content  # the signed link, no token needed
    assert poll(api, headers, **{}).status_code == 200
    unchanged = api.client.get(
        "/api/device/v1/deployments/next", headers={**headers, "If-None-Match": answer.headers["ETag"]}
    )
    assert unchanged.status_code == 304
    status_path = f"/api/device/v1/deployments/{deployment['id']}/status"
    for state in (
        "downloading",
        "downloading",
        "installing",
        "succeeded",
        "installing",
    ):  # a duplicate, a late one
        assert api.client.put(status_path, headers=headers, json={"status": state}).status_code == 204
    assert api.get(f"/deployments/{deployment['id']}").json()["status"] == "completed"
    assert api.get(f"/devices/{device_id}").json()["release_id"] == release["id"]
    assert poll(api, headers).status_code == 204  # nothing left to do


def test_reports_that_cannot_happen_and_other_devices_deployments(api: Api) -> None:
    device_id, headers = admitted_device(api, "P-2")
    _, stranger_headers = admitted_device(api, "P-3")
    release = api.release(device_types=[])
    deployment = api.post(
        "/deployments", json={"name": "p", "release_id": release["id"], "target": {"device_ids": [device_id]}}
    ).json()
    path = f"/api/device/v1/deployments/{deployment['id']}/status"
    assert api.client.put(path, headers=headers, json={"status": "rolled_back"}).status_code == 409
    assert api.client.put(path, headers=stranger_headers, json={"status": "failed"}).status_code == 404
    assert api.client.put(path, headers=headers, json={"status": "exploded"}).status_code == 400
    assert poll(api, stranger_headers).status_code == 204  # never another device's instructions


def test_long_poll_answers_when_an_update_appears(api: Api) -> None:
    device_id, headers = admitted_device(api, "P-4")
    release = api.release(device_types=[])
    result: dict[str, Any] = {}

    def wait_for_update() -> None:
        started = time.monotonic()
        result["response"] = poll(api, headers, wait=10)
        result["seconds"] = time.monotonic() - started

    waiter = threading.Thread(target=wait_for_update)
    waiter.start()
    time.sleep(1.0)
    api.post(
        "/deployments", json={"name": "p", "release_id": release["id"], "target": {"device_ids": [device_id]}}
    )
    waiter.join(timeout=15)
    assert result["response"].status_code == 200
    assert 0.9 < result["seconds"] < 5


def test_notifications_logs_and_inventory(api: Api) -> None:
    device_id, headers = admitted_device(api, "P-5")
    _, other_headers = admitted_device(api, "P-6")
    for level, message in (("info", "booted"), ("warning", "disk 80%"), ("critical", "disk 99%")):
        sent = api.client.post(
            "/api/device/v1/notifications", headers=headers, json={"level": level, "message": message}
        )
        assert sent.status_code == 201
    assert (
        api.client.post(
            "/api/device/v1/notifications", headers=headers, json={"level": "panic", "message": "x"}
        ).status_code
        == 400
    )
    assert (
        api.client.post(
            "/api/device/v1/notifications", headers=other_headers, json={"level": "info", "message": "hi"}
        ).status_code
        == 201
    )
    mine = api.get("/notifications", params={"device_id": device_id}).json()["items"]
    assert [n["level"] for n in mine] == ["critical", "warning", "info"]
    critical = api.get("/notifications", params={"level": "critical"}, role="viewer").json()["items"]
    assert [n["message"] for n in critical] == ["disk 99%"]
    assert api.get(f"/devices/{device_id}").json()["critical_at"] is not None

    inventory = api.client.patch(
        "/api/device/v1/inventory",
        headers=headers,
        json={"os": "Debian 12", "agent_version": "0.1.0", "disk_free_mb": 900},
    )
    assert inventory.status_code == 200 and inventory.json()["os"] == "Debian 12"
    api.client.patch(
        "/api/device/v1/inventory", headers=headers, json={"disk_free_mb": None, "kernel": "6.1"}
    )
    reported = api.get(f"/devices/{device_id}").json()["reported"]
    assert reported == {"os": "Debian 12", "agent_version": "0.1.0", "kernel": "6.1"}
    assert [
        d["id"]
        for d in api.get("/devices", params={"condition": "properties.reported.os = 'Debian 12'"}).json()[
            "items"
        ]
    ] == [device_id]

    release = api.release(device_types=[])
    deployment = api.post(
        "/deployments", json={"name": "p", "release_id": release["id"], "target": {"device_ids": [device_id]}}
    ).json()
    log_path = f"/api/device/v1/deployments/{deployment['id']}/log"
    assert (
        api.client.put(log_path, headers=headers, json={"log": "install: checksum mismatch\n"}).status_code
        == 204
    )
    assert api.client.put(log_path, headers=other_headers, json={"log": "not mine"}).status_code == 404
    log = api.get(f"/deployments/{deployment['id']}/devices/{device_id}/log").json()
    assert log["log"] == "install: checksum mismatch\n"
    assert api.get(f"/deployments/{deployment['id']}/devices/nobody/log").status_code == 404
