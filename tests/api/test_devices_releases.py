"""Devices and releases through the HTTP API."""

from __future__ import annotations

from .conftest import Api


def test_register_get_update_delete_device(api: Api) -> None:
    created = api.post(
        "/devices",
        json={
            "id": "gw-1",
            "device_type": "gw-x1",
            "architecture": "arm64",
            "tags": {"env": "prod", "ring": 2},
        },
    )
    assert created.status_code == 201, created.text
    device = created.json()
    assert device["status"] == "accepted" and device["name"] == "gw-1" and device["last_seen_at"] is None
    etag = created.headers["ETag"]
    assert (
        api.post("/devices", json={"id": "gw-1", "device_type": "x", "architecture": "y"}).status_code == 409
    )
    fetched = api.get("/devices/gw-1")
    assert fetched.json()["tags"] == {"env": "prod", "ring": 2} and fetched.headers["ETag"] == etag
    updated = api.put(
        "/devices/gw-1", json={"name": "Gateway 1", "tags": {"env": "dev"}}, headers={"If-Match": etag}
    )
    assert updated.status_code == 200 and updated.json()["tags"] == {"env": "dev"}
    stale = api.put("/devices/gw-1", json={"name": "again", "tags": {}}, headers={"If-Match": etag})
    assert stale.status_code == 412
    assert api.get("/devices/gw-1").json()["name"] == "Gateway 1"
    assert api.delete("/devices/gw-1", headers={"If-Match": etag}).status_code == 412
    assert api.delete("/devices/gw-1", headers={"If-Match": updated.headers["ETag"]}).status_code == 204
    assert api.get("/devices/gw-1").status_code == 404


def test_generated_device_ids_and_validation(api: Api) -> None:
    created = api.post("/devices", json={"device_type": "gw-x1", "architecture": "arm64"})
    assert created.status_code == 201 and created.json()["id"].startswith("dev_")
    bad = api.post("/devices", json={"id": "has space", "device_type": "gw", "architecture": "arm64"})
    assert bad.status_code == 400
    assert bad.json()["errors"][0]["location"] == "body.id"
    unknown_field = api.post("/devices", json={"device_type": "gw", "architecture": "a", "colour": "red"})
    assert unknown_field.status_code == 400
    assert (
        api.post(
            "/devices", json={"device_type": "gw", "architecture": "a", "release_id": "rel_x"}
        ).status_code
        == 400
    )


def test_list_devices_by_status_tag_type_and_condition(api: Api) -> None:
    api.device("a-1", tags={"env": "prod", "site": "x"}, reported={"arch": "arm64", "disk_free": 100})
    api.device("a-2", tags={"env": "prod", "site": "y"}, reported={"arch": "armv7", "disk_free": 5})
    api.device("a-3", tags={"env": "dev"}, device_type="gw-x2", status="pending")

    def ids(**params: object) -> list[str]:
        response = api.get("/devices", params=params)
        assert response.status_code == 200, response.text
        return [d["id"] for d in response.json()["items"]]

    assert ids() == ["a-1", "a-2", "a-3"]
    assert ids(status="pending") == ["a-3"]
    assert ids(device_type="gw-x1") == ["a-1", "a-2"]
    assert ids(tag="env:prod") == ["a-1", "a-2"]
    assert ids(tag=["env:prod", "site:y"]) == ["a-2"]
    assert ids(
        condition="properties.reported.arch IN ['arm64', 'armv7'] AND properties.reported.disk_free > 10"
    ) == ["a-1"]
    assert ids(condition="NOT tags.env = 'prod'") == ["a-3"]
    assert ids(condition="*", tag="site:x") == ["a-1"]
    assert ids(condition="deviceId = 'a-2'") == ["a-2"]
    page = api.get("/devices", params={"limit": 2}).json()
    assert len(page["items"]) == 2 and page["next_cursor"]
    rest = api.get("/devices", params={"limit": 2, "cursor": page["next_cursor"]}).json()
    assert [d["id"] for d in rest["items"]] == ["a-3"] and rest["next_cursor"] is None
    bad = api.get("/devices", params={"condition": "tags.env == 'x'"})
    assert bad.status_code == 400 and bad.json()["position"] >= 0


def test_release_lifecycle(api: Api) -> None:
    firmware = api.artifact(b"\x7fELF firmware" * 100, name="fw.bin")
    body = {
        "name": "edge",
        "version": "1.0.0",
        "kind": "patch",
        "payloads": [
            {
                "type": "container",
                "name": "telemetry",
                "image": "registry.local:5000/acme/telemetry:1.0@sha256:" + "a" * 64,
                "env": {"LOG_LEVEL": "info"},
                "ports": [{"container_port": 8080, "host_port": 80}],
                "create_options": {"HostConfig": {"Privileged": False}},
                "restart_policy": "on-failure",
            },
            {"type": "file", "artifact_id": firmware["id"]},
        ],
        "device_types": ["gw-x1"],
        "architectures": ["arm64"],
        "notes": "first",
    }
    created = api.post("/releases", json=body)
    assert created.status_code == 201, created.text
    release = created.json()
    assert release["payloads"][0]["restart_policy"] == "on-failure"
    assert release["payloads"][1] == {
        "type": "file",
        "artifact_id": firmware["id"],
        "filename": "fw.bin",
        "sha256": firmware["sha256"],
        "size": firmware["size"],
        "installer": "package",
        "target": body["name"],
    }
    assert api.post("/releases", json=body).status_code == 409
    updated = api.put(
        f"/releases/{release['id']}",
        json={"device_types": ["gw-x1", "gw-x2"], "architectures": [], "notes": "wider"},
        headers={"If-Match": created.headers["ETag"]},
    )
    assert updated.status_code == 200 and updated.json()["device_types"] == ["gw-x1", "gw-x2"]
    assert [r["id"] for r in api.get("/releases", params={"device_type": "gw-x2"}).json()["items"]] == [
        release["id"]
    ]
    assert api.get("/releases", params={"device_type": "gw-x9"}).json()["items"] == []
    # registry.local:5000 cannot be reached from here: the image check failed, the rest stands.
    validation = release["validation"]
    assert validation["status"] == "failed" and validation["override"] is None
    assert [(c["name"], c["passed"]) for c in validation["checks"]] == [("image-resolves", False)]
    assert "cannot be reached" in validation["checks"][0]["detail"]
    api.device("d1")
    refused = api.post("/devices/d1/update", json={"release_id": release["id"]})
    assert refused.status_code == 409 and "cannot be deployed" in refused.json()["detail"]
    assert "image-resolves" in refused.json()["detail"]
    reason = {"reason": "registry is on the factory network; image verified by hand"}
    assert api.post(f"/releases/{release['id']}/override", json=reason, role="developer").status_code == 403
    assert api.post(f"/releases/{release['id']}/override", json={"reason": "short"}).status_code == 400
    overridden = api.post(f"/releases/{release['id']}/override", json=reason)
    assert overridden.status_code == 200, overridden.text
    assert overridden.json()["validation"]["override"]["by"] == "admin-user"
    assert api.post(f"/releases/{release['id']}/override", json=reason).status_code == 409
    assert api.post("/devices/d1/update", json={"release_id": release["id"]}).status_code == 202
    revalidated = api.post(f"/releases/{release['id']}/validate").json()
    assert revalidated["validation"]["status"] == "failed" and revalidated["validation"]["override"] is None
    in_use = api.delete(f"/releases/{release['id']}")
    assert in_use.status_code == 409 and "used by 1 deployment" in in_use.json()["detail"]


def test_release_validation(api: Api) -> None:
    base = {
        "name": "r",
        "version": "1",
        "payloads": [{"type": "container", "name": "a", "image": "acme/app:1"}],
    }
    assert api.post("/releases", json=base | {"payloads": []}).status_code == 400
    assert api.post("/releases", json=base | {"kind": "full"}).status_code == 400
    bad_image = {"type": "container", "name": "a", "image": "UPPER/Case:1"}
    assert api.post("/releases", json=base | {"payloads": [bad_image]}).status_code == 400
    bad_type = {"type": "script", "name": "a"}
    assert api.post("/releases", json=base | {"payloads": [bad_type]}).status_code == 400
    created = api.post("/releases", json=base)
    assert created.status_code == 201
    assert api.delete(f"/releases/{created.json()['id']}").status_code == 204
    assert api.get(f"/releases/{created.json()['id']}").status_code == 404
