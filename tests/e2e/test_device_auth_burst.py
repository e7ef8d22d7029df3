"""A burst of devices authenticating at once (a fleet coming back after an outage, or a batch of
impostors) must not stall the server: every request is answered and the server keeps answering."""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from .harness import ServerProcess, server_process

__all__ = ["server_process"]

pytestmark = pytest.mark.e2e

BURST = 120


def _signed_request(number: int) -> tuple[bytes, str]:
    key = ed25519.Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    body = json.dumps(
        {
            "identity": {"device_id": f"burst-{number:04d}"},
            "public_key": public.decode(),
            "device_type": "burst",
            "architecture": "amd64",
        }
    ).encode()
    return body, base64.b64encode(key.sign(body)).decode()


def test_a_burst_of_authentications_is_answered(server_process: ServerProcess) -> None:
    requests = [_signed_request(number) for number in range(BURST)]

    def authenticate(request: tuple[bytes, str]) -> int:
        body, signature = request
        with httpx.Client(timeout=60) as http:
            answer = http.post(
                f"{server_process.base}/api/device/v1/authentication",
                content=body,
                headers={"Content-Type": "application/json", "X-Fleetlift-Signature": signature},
            )
            return answer.status_code

    with ThreadPoolExecutor(max_workers=BURST) as pool:
        statuses = list(pool.map(authenticate, requests))
        assert statuses == [401] * BURST  # all recorded as pending, none lost
        # The same devices with other keys: refused before anything is written, all at once.
        impostors = [_signed_request(number) for number in range(BURST)]
        statuses = list(pool.map(authenticate, impostors))
    assert set(statuses) == {401}
    assert httpx.get(f"{server_process.base}/healthz", timeout=5).status_code == 200
    pending = server_process.api.get("/devices", params={"status": "pending", "limit": 500})
    assert pending.status_code == 200 and len(pending.json()["items"]) == BURST
