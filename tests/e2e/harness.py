"""The server as a real process for end-to-end tests, with an admin client and the few
management calls the device-side tests need (artifacts, releases, deployments, admission)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..ports import free_port

BIN = Path(sys.executable).parent


def server_env(data_dir: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETLIFT_")}
    env["FLEETLIFT_DATA_DIR"] = str(data_dir)
    env["FLEETLIFT_LOG_LEVEL"] = "WARNING"
    env.update({f"FLEETLIFT_{name.upper()}": value for name, value in settings.items()})
    return env


def _spawn(data_dir: Path, env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    with (data_dir / "server.log").open("a") as log:
        process = subprocess.Popen(
            [str(BIN / "fleetlift"), "serve", "--host", "127.0.0.1", "--port", str(port), "--no-migrate"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.05)
    process.kill()
    raise AssertionError("server did not start: " + (data_dir / "server.log").read_text())


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@dataclass
class ServerProcess:
    base: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    api: httpx.Client  # the management API as an admin
    env: dict[str, str]
    port: int

    def stop(self) -> None:
        """The server goes away (devices see connection refused)."""
        _stop(self.process)

    def start(self) -> None:
        """Back on the same port and data."""
        self.process = _spawn(self.data_dir, self.env, self.port)

    def upload(self, content: bytes, name: str, version: str = "1") -> dict[str, Any]:
        response = self.api.post(
            "/artifacts",
            params={"name": name, "version": version},
            content=content,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert response.status_code == 201, response.text
        return dict(response.json())

    def release(self, name: str, version: str, payloads: list[dict[str, Any]], kind: str = "patch") -> str:
        response = self.api.post(
            "/releases", json={"name": name, "version": version, "kind": kind, "payloads": payloads}
        )
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def deploy(self, release_id: str, condition: str, name: str | None = None) -> str:
        response = self.api.post(
            "/deployments",
            json={
                "name": name or f"deploy {release_id}",
                "release_id": release_id,
                "target": {"condition": condition},
            },
        )
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def enrollment_token(self, name: str = "factory batch", tags: dict[str, str] | None = None) -> str:
        response = self.api.post(
            "/enrollment-tokens", json={"name": name, "valid_for_hours": 1, "tags": tags or {}}
        )
        assert response.status_code == 201, response.text
        return str(response.json()["token"])

    def wait_for_device(
        self, device_id: str, status: str = "accepted", timeout: float = 30
    ) -> dict[str, Any]:
        """Deployments target the devices known when they are created: wait for the device first."""
        deadline = time.monotonic() + timeout
        found: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            response = self.api.get(f"/devices/{device_id}")
            if response.status_code == 200:
                found = dict(response.json())
                if found["status"] == status:
                    return found
            time.sleep(0.1)
        raise AssertionError(f"device {device_id} never became {status}; last: {found}")

    def device_state(self, deployment_id: str, device_id: str) -> dict[str, Any] | None:
        listing = self.api.get(f"/deployments/{deployment_id}/devices", params={"limit": 500})
        assert listing.status_code == 200, listing.text
        for row in listing.json()["items"]:
            if row["device_id"] == device_id:
                return dict(row)
        return None

    def wait_for_state(
        self, deployment_id: str, device_id: str, states: set[str], timeout: float = 60
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        row: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            row = self.device_state(deployment_id, device_id)
            if row is not None and row["state"] in states:
                return row
            time.sleep(0.2)
        raise AssertionError(f"device {device_id} never reached {sorted(states)}; last: {row}")

    def log(self) -> str:
        return (self.data_dir / "server.log").read_text(errors="replace")


def start_server(data_dir: Path, **settings: str) -> Iterator[ServerProcess]:
    """Migrate, serve on a free port, yield once it answers, stop it afterwards."""
    data_dir.mkdir(parents=True, exist_ok=True)
    env = server_env(data_dir, **settings)
    migrated = subprocess.run(
        [str(BIN / "fleetlift"), "migrate"], env=env, capture_output=True, text=True, timeout=120
    )
    assert migrated.returncode == 0, migrated.stderr
    port = free_port()
    (data_dir / "server.log").write_text("")
    server: ServerProcess | None = None
    process = _spawn(data_dir, env, port)
    try:
        created = subprocess.run(
            [str(BIN / "fleetlift"), "token", "create", "--role", "admin", "--subject", "e2e"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert created.returncode == 0, f"token create failed: {created.stderr}"
        token = created.stdout.strip()
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}/api/v1",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        ) as api:
            server = ServerProcess(f"http://127.0.0.1:{port}", data_dir, process, api, env, port)
            yield server
    finally:
        _stop(server.process if server is not None else process)


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[ServerProcess]:
    """A fleetlift server process on SQLite that tells devices to poll every second."""
    yield from start_server(tmp_path / "server", device_poll_interval_seconds="1")
