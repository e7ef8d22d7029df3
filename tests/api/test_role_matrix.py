"""Every role through every management operation: allowed ones pass auth, the rest get 403."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from fleetlift.auth import ROLE_PERMISSIONS, Permission, Role

from .conftest import Api

ROLES = [role.value for role in Role]


def operations(api: Api) -> list[tuple[str, str, dict[str, Any] | bytes | None, Permission, str]]:
    """(method, path, body, permission, id) for every operation, with live resources to act on."""
    release = api.release()
    unverifiable = api.release(
        payloads=[{"type": "container", "name": "app", "image": "registry.invalid/acme/app:1"}]
    )
    artifact = api.artifact(b"matrix", name="matrix.bin")
    api.device("m-1")
    api.device("m-2")
    deployment = api.post(
        "/deployments",
        json={"name": "d", "release_id": release["id"], "target": {"device_ids": ["m-1"]}, "status": "draft"},
    ).json()
    put_deployment = {
        "name": "{unique}",
        "release_id": release["id"],
        "target": {"device_ids": ["m-1"]},
        "status": "draft",
    }
    return [
        ("GET", "/artifacts", None, Permission.RELEASES_READ, "list artifacts"),
        (
            "POST",
            "/artifacts?name=u.bin&version={unique}",
            b"bytes",
            Permission.RELEASES_WRITE,
            "upload artifact",
        ),
        ("GET", f"/artifacts/{artifact['id']}", None, Permission.RELEASES_READ, "get artifact"),
        ("GET", f"/artifacts/{artifact['id']}/download", None, Permission.RELEASES_READ, "download artifact"),
        ("POST", f"/artifacts/{artifact['id']}/link", None, Permission.RELEASES_READ, "link artifact"),
        ("DELETE", "/artifacts/art_missing", None, Permission.RELEASES_WRITE, "delete artifact"),
        ("GET", "/releases", None, Permission.RELEASES_READ, "list releases"),
        (
            "POST",
            "/releases",
            {"name": "n", "version": "{unique}", "payloads": release["payloads"]},
            Permission.RELEASES_WRITE,
            "create release",
        ),
        ("GET", f"/releases/{release['id']}", None, Permission.RELEASES_READ, "get release"),
        (
            "PUT",
            f"/releases/{release['id']}",
            {"device_types": [], "architectures": []},
            Permission.RELEASES_WRITE,
            "update release",
        ),
        ("DELETE", "/releases/rel_missing", None, Permission.RELEASES_WRITE, "delete release"),
        ("POST", f"/releases/{release['id']}/validate", None, Permission.RELEASES_WRITE, "validate release"),
        (
            "POST",
            f"/releases/{unverifiable['id']}/override",
            {"reason": "accepted risk, ticket OPS-42"},
            Permission.RELEASES_OVERRIDE,
            "override release",
        ),
        ("GET", "/devices", None, Permission.DEVICES_READ, "list devices"),
        (
            "POST",
            "/devices",
            {"device_type": "gw-x1", "architecture": "arm64"},
            Permission.DEVICES_WRITE,
            "register device",
        ),
        ("GET", "/devices/m-1", None, Permission.DEVICES_READ, "get device"),
        ("PUT", "/devices/m-1", {"name": "m", "tags": {}}, Permission.DEVICES_WRITE, "update device"),
        ("DELETE", "/devices/missing", None, Permission.DEVICES_WRITE, "delete device"),
        ("GET", "/devices/m-1/deployments", None, Permission.DEPLOYMENTS_READ, "device history"),
        ("POST", "/devices/missing/accept", None, Permission.DEVICES_ADMIT, "accept device"),
        ("POST", "/devices/missing/reject", None, Permission.DEVICES_ADMIT, "reject device"),
        ("POST", "/devices/missing/decommission", None, Permission.DEVICES_ADMIT, "decommission device"),
        (
            "POST",
            "/devices/preauthorize",
            {"identity": {"serial": "x"}, "public_key": "not a key", "device_type": "a", "architecture": "b"},
            Permission.DEVICES_ADMIT,
            "preauthorize device",
        ),
        (
            "POST",
            "/devices/m-2/update",
            {"release_id": release["id"]},
            Permission.UPDATES_TRIGGER,
            "update one",
        ),
        (
            "POST",
            "/devices/update",
            {"release_id": release["id"], "device_ids": ["m-2"]},
            Permission.UPDATES_TRIGGER,
            "update batch",
        ),
        ("GET", "/deployments", None, Permission.DEPLOYMENTS_READ, "list deployments"),
        (
            "POST",
            "/deployments",
            {"name": "d", "release_id": release["id"], "target": {"device_ids": ["m-1"]}, "status": "draft"},
            Permission.DEPLOYMENTS_WRITE,
            "create draft deployment",
        ),
        (
            "POST",
            "/deployments",
            {"name": "d", "release_id": release["id"], "target": {"device_ids": ["m-1"]}, "status": "active"},
            Permission.DEPLOYMENTS_CONTROL,
            "create active deployment",
        ),
        ("GET", f"/deployments/{deployment['id']}", None, Permission.DEPLOYMENTS_READ, "get deployment"),
        (
            "PUT",
            f"/deployments/{deployment['id']}",
            put_deployment,
            Permission.DEPLOYMENTS_WRITE,
            "edit deployment",
        ),
        (
            "PUT",
            "/deployments/{fresh_draft}",
            put_deployment | {"name": "d", "status": "cancelled"},
            Permission.DEPLOYMENTS_CONTROL,
            "cancel deployment",
        ),
        ("DELETE", "/deployments/dep_missing", None, Permission.DEPLOYMENTS_WRITE, "delete deployment"),
        ("POST", "/deployments/{fresh_draft}/start", None, Permission.DEPLOYMENTS_CONTROL, "start rollout"),
        *[
            (
                "POST",
                f"/deployments/{deployment['id']}/{action}",
                None,
                Permission.DEPLOYMENTS_CONTROL,
                action,
            )
            for action in ("pause", "resume", "cancel", "retry", "approve")
        ],
        (
            "GET",
            f"/deployments/{deployment['id']}/devices",
            None,
            Permission.DEPLOYMENTS_READ,
            "deployment devices",
        ),
        ("GET", "/audit", None, Permission.AUDIT_READ, "audit"),
        ("GET", "/notifications", None, Permission.DEVICES_READ, "notifications"),
        ("GET", "/enrollment-tokens", None, Permission.DEVICES_ADMIT, "list enrollment tokens"),
        (
            "POST",
            "/enrollment-tokens",
            {"name": "batch"},
            Permission.DEVICES_ADMIT,
            "create enrollment token",
        ),
        (
            "DELETE",
            "/enrollment-tokens/enr_missing",
            None,
            Permission.DEVICES_ADMIT,
            "revoke enrollment token",
        ),
        (
            "GET",
            f"/deployments/{deployment['id']}/devices/m-1/log",
            None,
            Permission.DEPLOYMENTS_READ,
            "device log",
        ),
        ("GET", "/registries", None, Permission.KEYS_MANAGE, "list registry credentials"),
        (
            "PUT",
            "/registries/r.example/credentials",
            {"username": "u", "password": "p"},
            Permission.KEYS_MANAGE,
            "store registry credentials",
        ),
        (
            "DELETE",
            "/registries/gone.example/credentials",
            None,
            Permission.KEYS_MANAGE,
            "forget credentials",
        ),
        *event_operations(api),
        *iothub_operations(api),
    ]


def iothub_operations(api: Api) -> list[tuple[str, str, dict[str, Any] | bytes | None, Permission, str]]:
    """Azure IoT Hub: admins register hubs; operators sync and trigger; every role reads."""
    connection = "HostName=m.azure-devices.net;SharedAccessKeyName=o;SharedAccessKey=a2V5LWZvci10aGUtbWF0cml4"
    # No periodic sync: the server's background worker must not try to reach a hub that does not exist.
    hub_body = {"connection_string": connection, "sync_interval_seconds": 0}
    hub = api.post("/iothub/hubs", json={"name": "matrix", **hub_body}).json()
    trigger = {"deployment_id": "dep_missing", "device_ids": ["m-1"]}
    return [
        (
            "POST",
            "/iothub/hubs",
            {"name": "{unique}", **hub_body},
            Permission.IOTHUB_WRITE,
            "register hub",
        ),
        ("GET", "/iothub/hubs", None, Permission.DEVICES_READ, "list hubs"),
        ("GET", f"/iothub/hubs/{hub['id']}", None, Permission.DEVICES_READ, "get hub"),
        (
            "PATCH",
            f"/iothub/hubs/{hub['id']}",
            {"sync_interval_seconds": 0},
            Permission.IOTHUB_WRITE,
            "change hub",
        ),
        ("DELETE", "/iothub/hubs/hub_missing", None, Permission.IOTHUB_WRITE, "forget hub"),
        # Hubs that do not exist: the permission is checked before anything reaches a hub.
        ("POST", "/iothub/hubs/hub_missing/sync", None, Permission.DEVICES_WRITE, "sync hub"),
        ("GET", "/iothub/hubs/hub_missing/deployments", None, Permission.DEPLOYMENTS_READ, "hub deployments"),
        ("GET", "/iothub/deployments/dep_missing", None, Permission.DEPLOYMENTS_READ, "hub delivery"),
        (
            "POST",
            "/iothub/hubs/hub_missing/devices/m-1/apply",
            {"deployment_id": "dep_missing"},
            Permission.UPDATES_TRIGGER,
            "apply to edge device",
        ),
        (
            "POST",
            "/iothub/hubs/hub_missing/devices/update",
            trigger,
            Permission.UPDATES_TRIGGER,
            "trigger devices",
        ),
    ]


def event_operations(api: Api) -> list[tuple[str, str, dict[str, Any] | bytes | None, Permission, str]]:
    """The event log and webhooks (admins manage webhooks; every role reads events)."""
    webhook = api.post("/webhooks", json={"url": "http://127.0.0.1:9/hook"}).json()
    put_webhook = {"url": "http://127.0.0.1:9/hook", "description": "{unique}", "active": False}
    return [
        ("GET", "/events", None, Permission.EVENTS_READ, "list events"),
        ("GET", "/webhooks", None, Permission.WEBHOOKS_READ, "list webhooks"),
        (
            "POST",
            "/webhooks",
            {"url": "http://127.0.0.1:9/hook"},
            Permission.WEBHOOKS_WRITE,
            "create webhook",
        ),
        ("GET", f"/webhooks/{webhook['id']}", None, Permission.WEBHOOKS_READ, "get webhook"),
        ("PUT", f"/webhooks/{webhook['id']}", put_webhook, Permission.WEBHOOKS_WRITE, "replace webhook"),
        ("DELETE", "/webhooks/whk_missing", None, Permission.WEBHOOKS_WRITE, "delete webhook"),
        (
            "GET",
            f"/webhooks/{webhook['id']}/deliveries",
            None,
            Permission.WEBHOOKS_READ,
            "webhook deliveries",
        ),
        ("POST", f"/webhooks/{webhook['id']}/ping", None, Permission.WEBHOOKS_WRITE, "ping webhook"),
    ]


def _unique(body: dict[str, Any] | bytes | None, suffix: str) -> dict[str, Any] | bytes | None:
    """Fill ``{unique}`` placeholders so each role's call is a real change, not a repeat."""
    if body is None or isinstance(body, bytes):
        return body
    return {key: f"n-{suffix}" if value == "{unique}" else value for key, value in body.items()}


def test_every_role_through_every_operation(api: Api) -> None:
    table = operations(api)
    release_id = next(path for _, path, _, _, name in table if name == "get release").rsplit("/", 1)[-1]
    draft_body = {"name": "d", "release_id": release_id, "target": {"device_ids": ["m-1"]}, "status": "draft"}
    documented = {
        (method.upper(), path)
        for path, item in api.client.app.openapi()["paths"].items()  # type: ignore[attr-defined]
        if path.startswith("/api/v1")
        for method in item
    }
    covered = set()
    failures = []
    for index, (method, path, body, permission, name) in enumerate(table):
        for role in ROLES:
            call_body = _unique(body, f"{role}-{index}")
            call_path = path.replace("{unique}", f"{role}-{index}")
            if "{fresh_draft}" in path:
                draft = api.post("/deployments", json=draft_body).json()
                call_path = path.replace("{fresh_draft}", draft["id"])
            if isinstance(call_body, bytes):
                response = api.call(
                    method,
                    call_path,
                    role=role,
                    content=call_body,
                    headers={"Content-Type": "application/octet-stream"},
                )
            else:
                response = api.call(method, call_path, role=role, json=call_body)
            allowed = permission in ROLE_PERMISSIONS[Role(role)]
            if allowed and response.status_code in (401, 403):
                failures.append(f"{role} refused '{name}' ({response.status_code}: {response.text[:120]})")
            if not allowed and response.status_code != 403:
                failures.append(f"{role} was not refused '{name}' ({response.status_code})")
            if response.status_code >= 500:
                failures.append(f"{role} '{name}' broke the server: {response.status_code}")
        templates = [t.removeprefix("/api/v1") for m, t in documented if m == method]
        matching = [t for t in templates if _matches(t, path.split("?")[0])]
        covered.add((method, max(matching, key=lambda t: t.count("{") * -1)))
    assert not failures, "\n".join(failures)
    assert covered == {(m, p.removeprefix("/api/v1")) for m, p in documented}


def _matches(template: str, path: str) -> bool:
    parts, actual = template.split("/"), path.split("/")
    return len(parts) == len(actual) and all(
        p == a or p.startswith("{") for p, a in zip(parts, actual, strict=True)
    )


@pytest.mark.parametrize("role", ROLES)
def test_documented_roles_match_the_matrix(api: Api, role: str) -> None:
    document = api.client.app.openapi()  # type: ignore[attr-defined]
    for item in document["paths"].values():
        for operation in item.values():
            permission = operation.get("x-fleetlift-permission")
            if permission is None:
                continue
            granted = Permission(permission) in ROLE_PERMISSIONS[Role(role)]
            assert (role in operation["x-fleetlift-roles"]) == granted
            assert permission in operation["description"]
            assert operation["security"] == [{"bearerAuth": []}]


def test_no_token_is_401_without_leaking(api: Api) -> None:
    for method, path in [("GET", "/deployments"), ("POST", "/devices"), ("GET", "/audit")]:
        response = api.call(method, path, role=None, json={})
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.headers["content-type"].startswith("application/problem+json")


def test_bad_tokens_are_401(api: Api) -> None:
    issued_long_ago = datetime.now(UTC) - timedelta(hours=3)
    expired = api.mint(
        "old", frozenset({Role.ADMIN}), timedelta(hours=1), tenant_id=api.tenant, now=issued_long_ago
    )
    forged = api.token("admin")[:-4] + "AAAA"
    for token in (expired, forged, "not-a-jwt", ""):
        response = api.get("/devices", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, token
        assert token not in response.text or token == ""
    assert api.get("/devices", headers={"Authorization": "Basic YWxpY2U6c2VjcmV0"}).status_code == 401


def test_token_without_roles_is_403(api: Api) -> None:
    token = api.token()
    response = api.get("/devices", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 403
