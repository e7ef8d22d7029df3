"""fleetlift-sim as users run it: a real process of virtual devices against a real server process.
They enroll, report inventory, take a deployment through to its outcome at the failure rate asked
for, upload logs that operators can read, and print a JSON summary."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from ..ports import free_port
from .harness import ServerProcess, start_server

pytestmark = pytest.mark.e2e

SIM = Path(sys.executable).parent / "fleetlift-sim"
FLEET_SIZE = 50
QUICK_UPDATES = ["--download-time", "0.2", "--install-time", "0.2", "--reboot-time", "0.2"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the module (each test's fleet has its own device type): devices poll every second."""
    yield from start_server(tmp_path_factory.mktemp("sim-server"), device_poll_interval_seconds="1")


@contextmanager
def simulator(*arguments: str) -> Iterator[subprocess.Popen[str]]:
    """fleetlift-sim in the background; stopped with SIGINT (as Ctrl-C would) if still running."""
    process = subprocess.Popen(
        [str(SIM), "--json", "--stats-interval", "0", "--seed", "7", *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def stop(process: subprocess.Popen[str]) -> dict[str, Any]:
    """Ctrl-C the simulator and read its JSON summary."""
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    return dict(json.loads(stdout))


def wait_for_progress(process: subprocess.Popen[str], text: str, timeout: float = 30.0) -> None:
    """Read the simulator's progress lines (stderr) until one contains ``text``."""
    assert process.stderr is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        assert line, "the simulator stopped"
        if text in line:
            return
    raise AssertionError(f"no progress line with {text!r}")


def wait_until(check: Any, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def sim_devices(server: ServerProcess, device_type: str) -> list[dict[str, Any]]:
    """The accepted devices of one simulated fleet that reported their inventory."""
    listing = server.api.get(
        "/devices",
        params={
            "status": "accepted",
            "condition": f"properties.reported.device_type = '{device_type}'",
            "limit": 1000,
        },
    )
    assert listing.status_code == 200, listing.text
    return list(listing.json()["items"])


def whole_fleet(server: ServerProcess, device_type: str) -> list[dict[str, Any]] | None:
    devices = sim_devices(server, device_type)
    return devices if len(devices) == FLEET_SIZE else None


def deployment_states(server: ServerProcess, deployment_id: str) -> dict[str, str]:
    listing = server.api.get(f"/deployments/{deployment_id}/devices", params={"limit": 1000})
    assert listing.status_code == 200, listing.text
    return {row["device_id"]: row["state"] for row in listing.json()["items"]}


def all_finished(server: ServerProcess, deployment_id: str, device_ids: set[str]) -> dict[str, str] | None:
    states = deployment_states(server, deployment_id)
    finished = {"succeeded", "failed", "rolled_back"}
    if set(states) >= device_ids and all(states[device] in finished for device in device_ids):
        return states
    return None


def base_release(server: ServerProcess, version: str) -> str:
    artifact = server.upload(b"simulated gateway firmware " * 4000, name="gw-fw.img", version=version)
    return server.release(
        "gw-firmware", version, [{"type": "file", "artifact_id": artifact["id"]}], kind="base"
    )


def test_an_enrolled_fleet_takes_a_deployment_and_all_succeed(server: ServerProcess, tmp_path: Path) -> None:
    token = server.enrollment_token(tags={"fleet": "sim"})
    release_id = base_release(server, "1.0.0")
    state_file = tmp_path / "fleet.json"
    arguments = ["--server", server.base, "--devices", str(FLEET_SIZE), "--prefix", "ok"]
    arguments += ["--enrollment-token", token, "--state-file", str(state_file), "--download"]
    with simulator(*arguments, "--ramp", "1", *QUICK_UPDATES) as process:
        devices = wait_until(
            lambda: whole_fleet(server, "sim-gw"),
            "every simulated device to be accepted and report inventory",
        )
        assert all(
            device["device_type"] == "sim-gw" and device["tags"] == {"fleet": "sim"} for device in devices
        )
        assert all(device["reported"]["agent_version"] == "sim" for device in devices)
        deployment_id = server.deploy(release_id, "properties.reported.device_type = 'sim-gw'")
        device_ids = {device["id"] for device in devices}
        states = wait_until(lambda: all_finished(server, deployment_id, device_ids), "every device to finish")
        assert set(states.values()) == {"succeeded"}
        summary = stop(process)

    assert summary["fleet"]["devices"] == FLEET_SIZE
    assert summary["devices"]["authenticated"] == FLEET_SIZE
    assert summary["updates"]["succeeded"] == FLEET_SIZE and "failed" not in summary["updates"]
    assert summary["reports"]["rebooting"] == FLEET_SIZE  # a base release reboots
    assert summary["bytes_downloaded"] == FLEET_SIZE * len(b"simulated gateway firmware " * 4000)
    assert summary["polls"]["total"] >= FLEET_SIZE and summary["latency_ms"]["p99"] is not None
    assert summary["errors"] == {}
    inventory = server.api.get(f"/devices/{devices[0]['id']}").json()["reported"]
    assert inventory["installed_releases"] == {"gw-firmware": "1.0.0"}

    # Restarted with its state file, the fleet comes back as the same devices, already up to date.
    with simulator(*arguments, *QUICK_UPDATES, "--stats-interval", "0.5") as process:
        wait_for_progress(process, f"devices auth {FLEET_SIZE} ")
        again = stop(process)
    assert again["devices"]["authenticated"] == FLEET_SIZE and again["updates"] == {}
    assert len(sim_devices(server, "sim-gw")) == FLEET_SIZE


def test_failures_and_rollbacks_are_reported_with_logs(server: ServerProcess) -> None:
    token = server.enrollment_token()
    release_id = base_release(server, "2.0.0")
    arguments = ["--server", server.base, "--devices", str(FLEET_SIZE), "--device-type", "sim-flaky"]
    arguments += ["--enrollment-token", token, "--failure-rate", "0.4", "--rollback-rate", "0.2"]
    with simulator(*arguments, *QUICK_UPDATES) as process:
        devices = wait_until(
            lambda: whole_fleet(server, "sim-flaky"), "every simulated device to be accepted"
        )
        deployment_id = server.deploy(release_id, "properties.reported.device_type = 'sim-flaky'")
        states = wait_until(
            lambda: all_finished(server, deployment_id, {device["id"] for device in devices}),
            "every device to finish",
        )
        summary = stop(process)

    outcomes = {state: list(states.values()).count(state) for state in set(states.values())}
    assert set(outcomes) == {"succeeded", "failed", "rolled_back"}, outcomes
    assert summary["updates"]["failed"] == outcomes["failed"]
    assert summary["updates"]["rolled_back"] == outcomes["rolled_back"]
    assert summary["logs_uploaded"] == outcomes["failed"] + outcomes["rolled_back"]
    failed_device = next(device for device, state in states.items() if state == "failed")
    log = server.api.get(f"/deployments/{deployment_id}/devices/{failed_device}/log")
    assert log.status_code == 200, log.text
    assert "downloading" in log.json()["log"] and "failed: " in log.json()["log"]
    rolled_back_device = next(device for device, state in states.items() if state == "rolled_back")
    log = server.api.get(f"/deployments/{deployment_id}/devices/{rolled_back_device}/log")
    assert "rolled_back: health check failed" in log.json()["log"]


def test_a_server_that_is_down_means_backoff_not_a_crash() -> None:
    unused = f"http://127.0.0.1:{free_port()}"
    finished = subprocess.run(
        [str(SIM), "--server", unused, "--devices", "20", "--duration", "3", "--json", "--max-backoff", "2"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert finished.returncode == 0, finished.stderr
    summary = json.loads(finished.stdout)
    assert summary["devices"]["unreachable"] == 20
    assert summary["errors"]["ConnectError"] >= 20 and summary["requests"] == 0


def test_help_explains_every_flag() -> None:
    shown = subprocess.run(
        [str(SIM), "--help"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    for flag in ("--devices", "--server", "--enrollment-token", "--ramp", "--poll-interval", "--download"):
        assert flag in shown
    for flag in (
        "--failure-rate",
        "--rollback-rate",
        "--notify-rate",
        "--duration",
        "--json",
        "--state-file",
    ):
        assert flag in shown
