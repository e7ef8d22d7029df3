"""The server as users run it: `fleetlift migrate`, `fleetlift serve` and `fleetlift token create`
as processes, then the README walk-through over real HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ..ports import free_port

BIN = Path(sys.executable).parent


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETLIFT_")}
    env["FLEETLIFT_DATA_DIR"] = str(data_dir)
    return env


def _cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "fleetlift"), *args],
        env=_env(data_dir),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    port = free_port()
    assert _cli(tmp_path, "migrate").returncode == 0
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [str(BIN / "fleetlift"), "serve", "--port", str(port), "--no-migrate"],
            env=_env(tmp_path),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise AssertionError(f"server did not start: {log_path.read_text()}")
        yield base, tmp_path
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_token_create_prints_only_the_token(tmp_path: Path) -> None:
    result = _cli(tmp_path, "token", "create", "--role", "admin", "--subject", "alice", "--ttl", "1h")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1 and result.stdout.count(".") == 2
    too_long = _cli(tmp_path, "token", "create", "--role", "admin", "--subject", "alice", "--ttl", "400d")
    assert too_long.returncode != 0 and too_long.stdout == ""
    bad_role = _cli(tmp_path, "token", "create", "--role", "root", "--subject", "alice")
    assert bad_role.returncode != 0 and bad_role.stdout == ""


def test_migrate_is_safe_to_run_again(tmp_path: Path) -> None:
    assert _cli(tmp_path, "migrate").returncode == 0
    assert _cli(tmp_path, "migrate").returncode == 0
    assert (tmp_path / "fleetlift.db").exists()


def test_readme_walkthrough(server: tuple[str, Path]) -> None:
    base, data_dir = server
    token = _cli(data_dir, "token", "create", "--role", "admin", "--subject", "alice").stdout.strip()
    with httpx.Client(
        base_url=f"{base}/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=10
    ) as http:
        _walk_through(http, base)


def _walk_through(http: httpx.Client, base: str) -> None:

    firmware = http.post(
        "/artifacts",
        params={"name": "gateway-fw.bin", "version": "1.4.0", "kind": "firmware"},
        content=b"\x7fELF gateway firmware 1.4.0" * 1000,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert firmware.status_code == 201, firmware.text
    release = http.post(
        "/releases",
        json={
            "name": "gateway-firmware",
            "version": "1.4.0",
            "kind": "base",
            "payloads": [{"type": "file", "artifact_id": firmware.json()["id"]}],
            "device_types": ["gateway-x1"],
            "architectures": ["arm64"],
        },
    )
    assert release.status_code == 201, release.text
    assert release.json()["validation"]["status"] == "passed"
    for number in (1, 2):
        device = http.post(
            "/devices",
            json={
                "id": f"gw-berlin-000{number}",
                "device_type": "gateway-x1",
                "architecture": "arm64",
                "tags": {"env": "prod", "site": "berlin"},
            },
        )
        assert device.status_code == 201, device.text
    deployment = http.post(
        "/deployments",
        json={
            "name": "edge-stack 1.4.0 to berlin",
            "release_id": release.json()["id"],
            "target": {"condition": "tags.site = 'berlin'"},
        },
    )
    assert deployment.status_code == 201, deployment.text
    status = http.get(f"/deployments/{deployment.json()['id']}").json()
    assert status["status"] == "active" and status["device_counts"] == {"pending": 2}
    devices = http.get(f"/deployments/{deployment.json()['id']}/devices").json()
    assert [d["device_id"] for d in devices["items"]] == ["gw-berlin-0001", "gw-berlin-0002"]
    docs = httpx.get(f"{base}/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
