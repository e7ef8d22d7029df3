"""Device identity and admission: signed authentication requests, pending devices, operator
decisions, preauthorization, device tokens that open only the device protocol, revocation."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from .conftest import Api

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def pem(key: PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def sign(key: PrivateKey, body: bytes) -> str:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.sign(body)
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        raw = key.sign(body, ec.ECDSA(hashes.SHA256()))
    else:
        raw = key.sign(body, padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(raw).decode()


def auth_request(
    api: Api, key: PrivateKey, identity: dict[str, Any], *, signer: PrivateKey | None = None
) -> Any:
    body = json.dumps(
        {
            "identity": identity,
            "public_key": pem(key),
            "device_type": "gw-x1",
            "architecture": "arm64",
            "tenant": api.tenant,
        }
    ).encode()
    return api.client.post(
        "/api/device/v1/authentication",
        content=body,
        headers={"Content-Type": "application/json", "X-Fleetlift-Signature": sign(signer or key, body)},
    )


@pytest.mark.parametrize(
    "make_key",
    [
        ed25519.Ed25519PrivateKey.generate,
        lambda: ec.generate_private_key(ec.SECP256R1()),
        lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    ],
)
def test_a_new_device_waits_for_admission_then_gets_a_token(api: Api, make_key: Any) -> None:
    key = make_key()
    first = auth_request(api, key, {"mac": "dc:a6:32:00:00:01", "serial": "S1"})
    assert first.status_code == 401 and first.json()["admission"] == "pending"
    device_id = first.json()["device_id"]
    assert api.get(f"/devices/{device_id}").json()["status"] == "pending"
    assert api.post(f"/devices/{device_id}/accept", role="viewer").status_code == 403
    assert api.post(f"/devices/{device_id}/accept", role="operator").status_code == 200
    admitted = auth_request(api, key, {"mac": "dc:a6:32:00:00:01", "serial": "S1"})
    assert admitted.status_code == 200, admitted.text
    token = admitted.json()["token"]
    me = api.client.get("/api/device/v1/identity", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200 and me.json() == {
        "device_id": device_id,
        "status": "accepted",
        "device_type": "gw-x1",
        "architecture": "arm64",
    }


def test_requests_not_signed_by_their_key_are_refused(api: Api) -> None:
    key, impostor = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    forged = auth_request(api, key, {"serial": "S2"}, signer=impostor)
    assert forged.status_code == 401 and "does not verify" in forged.json()["detail"]
    unsigned = api.client.post(
        "/api/device/v1/authentication",
        json={"identity": {"serial": "S2"}, "public_key": pem(key), "device_type": "a", "architecture": "b"},
    )
    assert unsigned.status_code == 401
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    assert auth_request(api, weak, {"serial": "S3"}).status_code == 400
    assert api.get("/devices").json()["items"] == []  # nothing recorded for a bad request


def test_an_admitted_identity_cannot_be_taken_over_with_another_key(api: Api) -> None:
    key, thief = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    device_id = auth_request(api, key, {"serial": "S4"}).json()["device_id"]
    api.post(f"/devices/{device_id}/accept")
    stolen = auth_request(api, thief, {"serial": "S4"})
    assert stolen.status_code == 401 and "another key" in stolen.json()["detail"]
    assert auth_request(api, key, {"serial": "S4"}).status_code == 200


def test_preauthorized_devices_get_a_token_on_first_contact(api: Api) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    created = api.post(
        "/devices/preauthorize",
        json={
            "identity": {"serial": "F-1"},
            "public_key": pem(key),
            "device_type": "gw-x1",
            "architecture": "arm64",
        },
        role="operator",
    )
    assert created.status_code == 201 and created.json()["status"] == "accepted"
    assert auth_request(api, key, {"serial": "F-1"}).status_code == 200
    again = api.post(
        "/devices/preauthorize",
        json={
            "identity": {"serial": "F-1"},
            "public_key": pem(key),
            "device_type": "gw-x1",
            "architecture": "arm64",
        },
    )
    assert again.status_code == 409


@pytest.mark.parametrize("event", ["reject", "decommission"])
def test_rejecting_or_decommissioning_revokes_tokens_at_once(api: Api, event: str) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    device_id = auth_request(api, key, {"serial": f"S5-{event}"}).json()["device_id"]
    api.post(f"/devices/{device_id}/accept")
    token = auth_request(api, key, {"serial": f"S5-{event}"}).json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert api.client.get("/api/device/v1/identity", headers=headers).status_code == 200
    assert api.post(f"/devices/{device_id}/{event}").status_code == 200
    assert api.client.get("/api/device/v1/identity", headers=headers).status_code == 401
    refused = auth_request(api, key, {"serial": f"S5-{event}"})
    assert refused.status_code == 401 and refused.json()["admission"] == (
        "rejected" if event == "reject" else "decommissioned"
    )
    if event == "decommission":
        assert api.post(f"/devices/{device_id}/accept").status_code == 409  # final


def test_device_tokens_open_only_the_device_protocol(api: Api) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    device_id = auth_request(api, key, {"serial": "S6"}).json()["device_id"]
    api.post(f"/devices/{device_id}/accept")
    token = auth_request(api, key, {"serial": "S6"}).json()["token"]
    device_headers = {"Authorization": f"Bearer {token}"}
    for path in ("/api/v1/devices", f"/api/v1/devices/{device_id}", "/api/v1/deployments", "/api/v1/audit"):
        assert api.client.get(path, headers=device_headers).status_code == 401
    admin_headers = {"Authorization": f"Bearer {api.token('admin')}"}
    assert api.client.get("/api/device/v1/identity", headers=admin_headers).status_code == 401
    assert api.client.get("/api/device/v1/identity").status_code == 401


def enroll(api: Api, key: PrivateKey, identity: dict[str, Any], token: str) -> Any:
    body = json.dumps(
        {
            "identity": identity,
            "public_key": pem(key),
            "device_type": "gw-x1",
            "architecture": "arm64",
            "tenant": api.tenant,
            "enrollment_token": token,
        }
    ).encode()
    return api.client.post(
        "/api/device/v1/authentication",
        content=body,
        headers={"Content-Type": "application/json", "X-Fleetlift-Signature": sign(key, body)},
    )


def test_enrollment_tokens_admit_a_batch(api: Api) -> None:
    assert api.post("/enrollment-tokens", json={"name": "x"}, role="developer").status_code == 403
    created = api.post(
        "/enrollment-tokens",
        json={"name": "line 3", "max_uses": 2, "tags": {"site": "plant-3"}},
        role="operator",
    )
    assert created.status_code == 201, created.text
    token = created.json()["token"]
    assert token.startswith("flt_enr_")
    listed = api.get("/enrollment-tokens")
    assert token not in listed.text and listed.json()[0]["uses"] == 0
    first = enroll(api, ed25519.Ed25519PrivateKey.generate(), {"serial": "E-1"}, token)
    assert first.status_code == 200, first.text
    device = api.get(f"/devices/{first.json()['device_id']}").json()
    assert device["status"] == "accepted" and device["tags"] == {"site": "plant-3"}
    assert enroll(api, ed25519.Ed25519PrivateKey.generate(), {"serial": "E-2"}, token).status_code == 200
    used_up = enroll(api, ed25519.Ed25519PrivateKey.generate(), {"serial": "E-3"}, token)
    assert used_up.status_code == 401 and "used up" in used_up.json()["detail"]
    assert api.get("/devices", params={"tag": "site:plant-3"}).json()["items"].__len__() == 2
    assert (
        enroll(api, ed25519.Ed25519PrivateKey.generate(), {"serial": "E-4"}, "flt_enr_forged").status_code
        == 401
    )
    assert api.get("/devices/" + first.json()["device_id"]).status_code == 200
    other = api.post("/enrollment-tokens", json={"name": "other"}).json()
    assert api.delete(f"/enrollment-tokens/{other['id']}").status_code == 204
    assert (
        enroll(api, ed25519.Ed25519PrivateKey.generate(), {"serial": "E-5"}, other["token"]).status_code
        == 401
    )
    assert [
        d["id"] for d in api.get("/devices").json()["items"]
    ].__len__() == 2  # refused devices are not recorded
