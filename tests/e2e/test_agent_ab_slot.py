"""A/B updates with the real server and agent processes: the simulated bootloader plays each
start of the agent as a power-on. A new slot that proves healthy is committed; one whose boot is
never confirmed is abandoned by the bootloader and the old slot runs again."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from fleetlift_agent.runner import REBOOT_EXIT_CODE

from .agent_process import AgentProcess
from .harness import ServerProcess, server_process

__all__ = ["server_process"]

pytestmark = pytest.mark.e2e


def _base_release(server: ServerProcess, version: str, image: bytes) -> str:
    artifact = server.upload(image, f"rootfs-{version}.img", version)
    return server.release(
        "rootfs", version, [{"type": "file", "artifact_id": artifact["id"]}], kind="base"
    )  # a base release installs into the A/B slots by default


def _start_admitted(
    server: ServerProcess, tmp_path: Path, agents: list[AgentProcess], device_id: str, *extra: str
) -> AgentProcess:
    token = server.enrollment_token(device_id)
    agent = AgentProcess(
        server.base, tmp_path / device_id, device_id, "--enrollment-token", token, *extra
    ).start()
    agents.append(agent)
    server.wait_for_device(device_id)
    return agent


def _selector(agent: AgentProcess) -> dict[str, object]:
    return dict(json.loads((agent.data_dir / "boot-selector.json").read_text()))


def test_a_healthy_new_slot_is_committed_after_the_reboot(
    server_process: ServerProcess, tmp_path: Path, agents: list[AgentProcess]
) -> None:
    server = server_process
    agent = _start_admitted(server, tmp_path, agents, "gw-ab-1", "--ab-health-command", "true")
    image = os.urandom(300_000)
    deployment = server.deploy(_base_release(server, "2.0.0", image), "deviceId = 'gw-ab-1'")
    assert agent.wait_exit(timeout=60) == REBOOT_EXIT_CODE, agent.log()[-3000:]
    assert server.device_state(deployment, "gw-ab-1")["state"] == "rebooting"  # type: ignore[index]
    assert _selector(agent)["upgrade_available"] is True
    agent.start()  # the power-on: the bootloader tries the new slot
    row = server.wait_for_state(deployment, "gw-ab-1", {"succeeded", "failed", "rolled_back"})
    assert row["state"] == "succeeded", agent.log()[-3000:]
    selector = _selector(agent)
    assert selector["active"] == "b" and selector["upgrade_available"] is False
    slot_b = (agent.data_dir / "slots" / "b.img").read_bytes()
    assert hashlib.sha256(slot_b[: len(image)]).digest() == hashlib.sha256(image).digest()


def test_a_new_boot_never_confirmed_falls_back_to_the_old_slot(
    server_process: ServerProcess, tmp_path: Path, agents: list[AgentProcess]
) -> None:
    server = server_process
    agent = _start_admitted(
        server, tmp_path, agents, "gw-ab-2", "--ab-health-command", "sleep 120", "--boot-limit", "1"
    )
    deployment = server.deploy(_base_release(server, "2.0.0", os.urandom(100_000)), "deviceId = 'gw-ab-2'")
    assert agent.wait_exit(timeout=60) == REBOOT_EXIT_CODE, agent.log()[-3000:]
    agent.start()  # boots slot b; its health check hangs: the boot is never confirmed
    server.wait_for_state(deployment, "gw-ab-2", {"verifying"})
    time.sleep(0.5)
    assert (agent.data_dir / "boot-selector.booted").read_text().strip() == "b"
    agent.kill9()  # power cut (or a watchdog reset) before the commit
    agent.start()  # the bootloader has used up the trial boot and goes back to slot a
    row = server.wait_for_state(deployment, "gw-ab-2", {"succeeded", "failed", "rolled_back"})
    assert row["state"] == "rolled_back", agent.log()[-3000:]
    assert "did not boot" in (row.get("detail") or ""), row
    assert (agent.data_dir / "boot-selector.booted").read_text().strip() == "a"
    assert _selector(agent)["active"] == "a" and _selector(agent)["upgrade_available"] is False
