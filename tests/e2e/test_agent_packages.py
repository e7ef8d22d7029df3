"""The real server and real agent processes: admission, a code package installed, a failing
package rolled back, a corrupted download refused, and kill -9 mid-download and mid-install."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .agent_process import AgentProcess, code_package
from .harness import ServerProcess, server_process, start_server

__all__ = ["server_process"]

pytestmark = pytest.mark.e2e


def _admitted_agent(
    server: ServerProcess, tmp_path: Path, agents: list[AgentProcess], device_id: str, *extra: str
) -> AgentProcess:
    agent = AgentProcess(server.base, tmp_path / device_id, device_id, *extra).start()
    agents.append(agent)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = server.api.get(f"/devices/{device_id}")
        if found.status_code == 200:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the device never asked to be admitted:\n" + agent.log())
    assert found.json()["status"] == "pending"
    accepted = server.api.post(f"/devices/{device_id}/accept")
    assert accepted.status_code == 200, accepted.text
    return agent


def _package_release(server: ServerProcess, version: str, content: bytes) -> str:
    artifact = server.upload(content, f"app-{version}.tar.gz", version)
    return server.release(
        "app",
        version,
        [{"type": "file", "artifact_id": artifact["id"], "installer": "package", "target": "app"}],
    )


def _current_version(agent: AgentProcess) -> str:
    return os.readlink(agent.data_dir / "packages" / "app" / "current").rstrip("/").split("/")[-1]


def test_admission_then_package_install_with_inventory(
    server_process: ServerProcess, tmp_path: Path, agents: list[AgentProcess]
) -> None:
    server = server_process
    agent = _admitted_agent(server, tmp_path, agents, "gw-pkg-1")
    release_id = _package_release(server, "1.0.0", code_package("1.0.0"))
    deployment = server.deploy(release_id, "deviceId = 'gw-pkg-1'")
    row = server.wait_for_state(deployment, "gw-pkg-1", {"succeeded", "failed", "rolled_back"})
    assert row["state"] == "succeeded", agent.log()[-3000:]
    assert (agent.data_dir / "packages" / "app" / "current" / "app.txt").read_text() == "app 1.0.0\n"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        reported = server.api.get("/devices/gw-pkg-1").json()["reported"]
        if reported.get("installed", {}).get("package:app") == "1.0.0":
            break
        time.sleep(0.3)
    else:
        raise AssertionError(f"inventory never showed the package: {reported}")
    assert reported["agent_version"] and reported["device_type"] == "e2e-gw"


def test_failing_package_is_rolled_back_and_its_log_uploaded(
    server_process: ServerProcess, tmp_path: Path, agents: list[AgentProcess]
) -> None:
    server = server_process
    agent = _admitted_agent(server, tmp_path, agents, "gw-pkg-2")
    good = server.deploy(_package_release(server, "1.0.0", code_package("1.0.0")), "deviceId = 'gw-pkg-2'")
    assert server.wait_for_state(good, "gw-pkg-2", {"succeeded", "failed"})["state"] == "succeeded"
    bad_release = _package_release(
        server, "2.0.0", code_package("2.0.0", check="echo database unreachable; exit 4")
    )
    bad = server.deploy(bad_release, "deviceId = 'gw-pkg-2'")
    row = server.wait_for_state(bad, "gw-pkg-2", {"succeeded", "failed", "rolled_back"})
    assert row["state"] == "rolled_back", agent.log()[-3000:]
    assert _current_version(agent) == "1.0.0"
    assert not (agent.data_dir / "packages" / "app" / "versions" / "2.0.0").exists()
    log = server.api.get(f"/deployments/{bad}/devices/gw-pkg-2/log")
    assert log.status_code == 200, log.text
    assert "database unreachable" in log.json()["log"]


def test_corrupted_download_is_refused(
    server_process: ServerProcess, tmp_path: Path, agents: list[AgentProcess]
) -> None:
    server = server_process
    agent = _admitted_agent(server, tmp_path, agents, "gw-pkg-3")
    content = code_package("1.0.0")
    artifact = server.upload(content, "app-1.0.0.tar.gz", "1.0.0")
    stored = [
        p
        for p in (server.data_dir / "artifacts").rglob("*")
        if p.is_file() and p.stat().st_size == len(content)
    ]
    assert len(stored) == 1
    stored[0].write_bytes(content[:-10] + b"tampered!!")  # same size, other bytes
    release_id = server.release(
        "app",
        "1.0.0",
        [{"type": "file", "artifact_id": artifact["id"], "installer": "package", "target": "app"}],
    )
    deployment = server.deploy(release_id, "deviceId = 'gw-pkg-3'")
    row = server.wait_for_state(deployment, "gw-pkg-3", {"succeeded", "failed", "rolled_back"})
    assert row["state"] == "failed", agent.log()[-3000:]
    assert "sha-256" in (row.get("detail") or "").lower() or "sha256" in (row.get("detail") or "").lower(), (
        row
    )
    assert not (agent.data_dir / "packages" / "app").exists()


def _partial_download(agent: AgentProcess, at_least: int) -> Path:
    """The agent's .part file once it holds ``at_least`` bytes."""
    downloads = agent.data_dir / "downloads"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        parts = list(downloads.glob("*.part")) if downloads.exists() else []
        if parts and parts[0].stat().st_size >= at_least:
            return parts[0]
        time.sleep(0.05)
    raise AssertionError("the download never got going:\n" + agent.log()[-3000:])


def test_kill_9_mid_download_resumes(
    server_process: ServerProcess, tmp_path: Path, agents: list[AgentProcess]
) -> None:
    server = server_process
    agent = _admitted_agent(server, tmp_path, agents, "gw-pkg-4", "--rate-limit", "400000")
    release_id = _package_release(server, "1.0.0", code_package("1.0.0", padding=2_000_000))
    deployment = server.deploy(release_id, "deviceId = 'gw-pkg-4'")
    part = _partial_download(agent, at_least=300_000)
    agent.kill9()
    kept = part.stat().st_size
    assert 0 < kept < 2_000_000
    agent.start()
    row = server.wait_for_state(deployment, "gw-pkg-4", {"succeeded", "failed", "rolled_back"})
    assert row["state"] == "succeeded", agent.log()[-3000:]
    assert "resuming deployment" in agent.log()
    assert _current_version(agent) == "1.0.0"


def test_kill_9_mid_install_rolls_back(
    server_process: ServerProcess, tmp_path: Path, agents: list[AgentProcess]
) -> None:
    server = server_process
    agent = _admitted_agent(server, tmp_path, agents, "gw-pkg-5")
    good = server.deploy(_package_release(server, "1.0.0", code_package("1.0.0")), "deviceId = 'gw-pkg-5'")
    assert server.wait_for_state(good, "gw-pkg-5", {"succeeded", "failed"})["state"] == "succeeded"
    slow = _package_release(server, "2.0.0", code_package("2.0.0", check="sleep 60"))
    deployment = server.deploy(slow, "deviceId = 'gw-pkg-5'")
    server.wait_for_state(deployment, "gw-pkg-5", {"verifying"})
    assert _current_version(agent) == "2.0.0"  # switched, being checked
    agent.kill9()
    journal = json.loads((agent.data_dir / "journal.json").read_text())
    assert journal["current"]["phase"] == "verifying"
    agent.start()
    row = server.wait_for_state(deployment, "gw-pkg-5", {"succeeded", "failed", "rolled_back"})
    assert row["state"] == "rolled_back", agent.log()[-3000:]
    assert _current_version(agent) == "1.0.0"


def test_the_hosting_application_decides_when_a_patch_is_applied(
    server_process: ServerProcess, tmp_path: Path, agents: list[AgentProcess]
) -> None:
    from fleetlift_agent.sdk import AgentClient

    from ..ports import free_port

    server = server_process
    port = free_port()
    agent = _admitted_agent(
        server, tmp_path, agents, "gw-app-1", "--app-control", "--local-api-port", str(port)
    )
    application = AgentClient(port)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            assert application.state().state == "BUSY"  # a new device starts busy
            break
        except OSError:
            time.sleep(0.1)
    deployment = server.deploy(
        _package_release(server, "1.0.0", code_package("1.0.0")), "deviceId = 'gw-app-1'"
    )
    server.wait_for_state(deployment, "gw-app-1", {"downloaded"})
    time.sleep(2)  # busy: the agent downloads but does not install
    assert server.device_state(deployment, "gw-app-1")["state"] == "downloaded"  # type: ignore[index]
    assert application.state().state == "BUSY"
    assert application.ready().state in ("READY_WITHPATCH", "WAIT_CONFIRM_PATCH")
    deadline = time.monotonic() + 10
    while application.state().state != "WAIT_CONFIRM_PATCH" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert application.state().state == "WAIT_CONFIRM_PATCH"
    assert not (agent.data_dir / "packages" / "app").exists()
    application.confirm_patch()
    row = server.wait_for_state(deployment, "gw-app-1", {"succeeded", "failed", "rolled_back"})
    assert row["state"] == "succeeded", agent.log()[-3000:]
    assert application.state().state == "READY"


def test_offline_the_agent_finishes_and_reports_when_the_server_is_back(
    server_process: ServerProcess, tmp_path: Path, agents: list[AgentProcess]
) -> None:
    server = server_process
    agent = _admitted_agent(server, tmp_path, agents, "gw-pkg-6")
    release_id = _package_release(server, "1.0.0", code_package("1.0.0", check="sleep 3"))
    deployment = server.deploy(release_id, "deviceId = 'gw-pkg-6'")
    server.wait_for_state(deployment, "gw-pkg-6", {"verifying"})
    server.stop()  # the uplink goes down while the device checks the new version
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        journal = json.loads((agent.data_dir / "journal.json").read_text())
        if journal["current"] is None:
            break
        time.sleep(0.2)
    assert journal["outbox"] and journal["outbox"][0]["status"] == "succeeded"  # decided, not yet told
    time.sleep(3)  # a few polls fail: the agent backs off, with jitter
    server.start()
    row = server.wait_for_state(deployment, "gw-pkg-6", {"succeeded", "failed", "rolled_back"}, timeout=90)
    assert row["state"] == "succeeded", agent.log()[-3000:]
    assert "trying again in" in agent.log()
    assert json.loads((agent.data_dir / "journal.json").read_text())["outbox"] == []


@pytest.fixture
def short_links_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """Download links that expire after 2 seconds."""
    yield from start_server(
        tmp_path / "server", device_poll_interval_seconds="1", download_link_ttl_seconds="2"
    )


def test_an_expired_link_is_replaced_and_the_download_resumed(
    short_links_server: ServerProcess, tmp_path: Path, agents: list[AgentProcess]
) -> None:
    server = short_links_server
    agent = _admitted_agent(server, tmp_path, agents, "gw-pkg-7", "--rate-limit", "400000")
    release_id = _package_release(server, "1.0.0", code_package("1.0.0", padding=1_500_000))
    deployment = server.deploy(release_id, "deviceId = 'gw-pkg-7'")
    _partial_download(agent, at_least=200_000)
    agent.kill9()
    time.sleep(3)  # the link the journal holds has expired
    agent.start()
    row = server.wait_for_state(deployment, "gw-pkg-7", {"succeeded", "failed", "rolled_back"})
    assert row["state"] == "succeeded", agent.log()[-3000:]
    assert "link expired" in agent.log()
