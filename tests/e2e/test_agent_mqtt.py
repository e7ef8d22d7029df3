"""The real server, the real agent and the real Mosquitto: a deployment created while the agent
polls only every 300 seconds reaches it within seconds through a "check now" message; forced
deployments are applied without the hosting application's confirmation, soft ones wait for it."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from ..mosquitto import ensure_local_broker
from ..ports import free_port
from .agent_process import AgentProcess, code_package
from .harness import ServerProcess, start_server

pytestmark = pytest.mark.e2e


def _release(server: ServerProcess, version: str) -> str:
    artifact = server.upload(code_package(version), f"app-{version}.tar.gz", version)
    return server.release(
        "app",
        version,
        [{"type": "file", "artifact_id": artifact["id"], "installer": "package", "target": "app"}],
    )


def _deploy(server: ServerProcess, release_id: str, device_id: str, policy: dict[str, Any]) -> str:
    response = server.api.post(
        "/deployments",
        json={
            "name": f"{release_id} to {device_id}",
            "release_id": release_id,
            "target": {"condition": f"deviceId = '{device_id}'"},
            "policy": policy,
        },
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _enrolled_agent(
    server: ServerProcess, tmp_path: Path, agents: list[AgentProcess], device_id: str, *extra: str
) -> AgentProcess:
    token = server.enrollment_token()
    agent = AgentProcess(server.base, tmp_path / device_id, device_id, "--enrollment-token", token, *extra)
    agents.append(agent.start())
    server.wait_for_device(device_id)
    return agent


def test_a_deployment_reaches_an_agent_polling_every_five_minutes_within_seconds(
    tmp_path: Path, agents: list[AgentProcess]
) -> None:
    local = ensure_local_broker()  # anonymous allowed: any user name and password are accepted
    server_url = local.replace("mqtt://", "mqtt://fleetlift-server:server-pw-e2e@")
    device_url = local.replace("mqtt://", "mqtt://gw-mqtt-1:device-pw-e2e@")
    prefix = f"fleetlift-e2e-{uuid.uuid4().hex[:8]}"  # apart from other tests on the same broker
    for server in start_server(
        tmp_path / "server", device_channel="mqtt", mqtt_url=server_url, mqtt_topic_prefix=prefix
    ):
        agent = _enrolled_agent(
            server,
            tmp_path,
            agents,
            "gw-mqtt-1",
            "--poll-interval",
            "300",
            "--mqtt-url",
            device_url,
            "--mqtt-topic-prefix",
            prefix,
        )
        agent.wait_for_log(f"subscribed to {prefix}/default/devices/gw-mqtt-1/check", timeout=30)
        release_id = _release(server, "1.0.0")
        created = time.monotonic()
        deployment = _deploy(server, release_id, "gw-mqtt-1", {})
        row = server.wait_for_state(
            deployment, "gw-mqtt-1", {"succeeded", "failed", "rolled_back"}, timeout=60
        )
        took = time.monotonic() - created
        assert row["state"] == "succeeded", agent.log()[-3000:]
        assert took < 30, f"{took:.1f}s: the agent waited for its poll instead of the message"
        assert "check message from the server: polling now" in agent.log()

        # A wave released later by the reconciler (not the request) reaches it the same way.
        second = _deploy(
            server,
            _release(server, "2.0.0"),
            "gw-mqtt-1",
            {"waves": [{"name": "canary", "device_ids": ["gw-mqtt-1"]}], "mode": "soft"},
        )
        created = time.monotonic()
        row = server.wait_for_state(second, "gw-mqtt-1", {"succeeded", "failed", "rolled_back"}, timeout=60)
        assert row["state"] == "succeeded", agent.log()[-3000:]
        assert time.monotonic() - created < 30
        assert "server-pw-e2e" not in server.log() and "device-pw-e2e" not in agent.log()


def test_forced_is_applied_at_once_and_soft_waits_for_the_application(
    tmp_path: Path, agents: list[AgentProcess]
) -> None:
    from fleetlift_agent.sdk import AgentClient

    for server in start_server(tmp_path / "server", device_poll_interval_seconds="1"):
        applications: dict[str, AgentClient] = {}
        started: dict[str, AgentProcess] = {}
        for device in ("gw-soft-1", "gw-forced-1"):
            port = free_port()
            started[device] = _enrolled_agent(
                server, tmp_path, agents, device, "--app-control", "--local-api-port", str(port)
            )
            applications[device] = AgentClient(port)
        for device, application in applications.items():
            deadline = time.monotonic() + 20
            while True:
                try:
                    assert application.state().state == "BUSY"  # a new device starts busy, and stays so
                    break
                except OSError:
                    assert time.monotonic() < deadline, started[device].log()[-2000:]
                    time.sleep(0.1)

        release_id = _release(server, "1.0.0")
        soft = _deploy(server, release_id, "gw-soft-1", {"mode": "soft"})
        forced = _deploy(server, release_id, "gw-forced-1", {"mode": "forced"})
        row = server.wait_for_state(forced, "gw-forced-1", {"succeeded", "failed", "rolled_back"}, timeout=60)
        assert row["state"] == "succeeded", started["gw-forced-1"].log()[-3000:]
        forced_agent = started["gw-forced-1"]
        assert (
            forced_agent.data_dir / "packages" / "app" / "current" / "app.txt"
        ).read_text() == "app 1.0.0\n"
        assert "forced update: applying without the application's confirmation" in forced_agent.log()
        assert applications["gw-forced-1"].state().state == "BUSY"  # busy again, as the application left it

        server.wait_for_state(soft, "gw-soft-1", {"downloaded"})
        time.sleep(2)  # the soft one waits for a confirmation that does not come
        assert server.device_state(soft, "gw-soft-1")["state"] == "downloaded"  # type: ignore[index]
        assert not (started["gw-soft-1"].data_dir / "packages" / "app").exists()
        assert applications["gw-soft-1"].state().state == "BUSY"
