"""A burst of devices authenticating at once (a fleet coming back after an outage, or a batch of
impostors) must not stall the server: every request is answered and the server keeps answering."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from .harness import ServerProcess, server_process, start_server
from .test_rollout_e2e import pg_schema

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


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def reporting_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    if request.param == "sqlite":
        yield from start_server(tmp_path / "server")
        return
    with pg_schema() as url:
        yield from start_server(tmp_path / "server", database_url=url)


def test_a_burst_of_device_reports_is_answered(reporting_server: ServerProcess) -> None:
    """More reports in flight than the database pool has connections: each request gives its
    connection back before it waits for a worker thread, so none waits out the pool's timeout."""
    server_process = reporting_server
    enrollment = server_process.enrollment_token("burst reports")

    def enroll(number: int) -> str:
        body = json.loads(_signed_request(number)[0])
        key = ed25519.Ed25519PrivateKey.generate()
        body["identity"] = {"device_id": f"report-{number:04d}"}
        body["public_key"] = (
            key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )
        body["enrollment_token"] = enrollment
        raw = json.dumps(body).encode()
        with httpx.Client(timeout=60) as http:
            answer = http.post(
                f"{server_process.base}/api/device/v1/authentication",
                content=raw,
                headers={
                    "Content-Type": "application/json",
                    "X-Fleetlift-Signature": base64.b64encode(key.sign(raw)).decode(),
                },
            )
        assert answer.status_code == 200, answer.text
        return str(answer.json()["token"])

    async def report_all(tokens: list[str]) -> list[tuple[int, float]]:
        # All at once, on one client: threads creating clients one by one spread the burst out.
        limits = httpx.Limits(max_connections=len(tokens), max_keepalive_connections=len(tokens))
        async with httpx.AsyncClient(base_url=server_process.base, timeout=60, limits=limits) as http:

            async def report(token: str) -> tuple[int, float]:
                started = time.monotonic()
                answer = await http.patch(
                    "/api/device/v1/inventory",
                    json={"os": "Debian 12", "disk_free_mb": 4096},
                    headers={"Authorization": f"Bearer {token}"},
                )
                return answer.status_code, time.monotonic() - started

            return await asyncio.gather(*(report(token) for token in tokens))

    with ThreadPoolExecutor(max_workers=BURST) as pool:
        tokens = list(pool.map(enroll, range(BURST)))
    answers = asyncio.run(report_all(tokens))
    assert [status for status, _ in answers] == [200] * BURST
    # The pool's checkout timeout is 30 s: a request that waited it out took at least that long.
    slowest = max(seconds for _, seconds in answers)
    assert slowest < 20, f"the slowest report took {slowest:.1f} s"
