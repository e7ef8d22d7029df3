"""Containers end to end: the real server, a real agent process, a real dockerd pulling from a
real docker-registry. A release is installed; an unhealthy one is rolled back while the old
container keeps running."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..dockerd import Dockerd, TestImages, dockerd, image_registry, test_images
from .agent_process import AgentProcess
from .harness import ServerProcess, server_process

__all__ = ["dockerd", "image_registry", "server_process", "test_images"]

pytestmark = [pytest.mark.e2e, pytest.mark.docker]


@pytest.fixture
def agent(server_process: ServerProcess, dockerd: Dockerd, tmp_path: Path) -> Iterator[AgentProcess]:
    token = server_process.enrollment_token("containers")
    process = AgentProcess(
        server_process.base,
        tmp_path / "agent",
        "gw-docker-1",
        "--enrollment-token",
        token,
        "--docker-url",
        dockerd.base_url,
        "--container-network",
        "none",
        "--soak",
        "2",
        "--health-timeout",
        "20",
    ).start()
    server_process.wait_for_device("gw-docker-1")
    yield process
    process.stop()
    with contextlib.closing(dockerd.api()) as api:
        for container in api.containers(all=True, filters={"label": "io.fleetlift.name"}):
            api.remove_container(container["Id"], force=True)


def _container_release(server: ServerProcess, version: str, image: str) -> str:
    return server.release("telemetry", version, [{"type": "container", "name": "telemetry", "image": image}])


def _containers(dockerd: Dockerd) -> dict[str, dict[str, Any]]:
    with contextlib.closing(dockerd.api()) as api:
        return {
            container["Names"][0].lstrip("/"): container
            for container in api.containers(all=True, filters={"label": "io.fleetlift.name"})
        }


def test_a_container_release_is_installed_and_a_failing_one_rolled_back(
    server_process: ServerProcess, agent: AgentProcess, dockerd: Dockerd, test_images: TestImages
) -> None:
    server = server_process
    first = server.deploy(_container_release(server, "1", test_images.healthy_v1), "deviceId = 'gw-docker-1'")
    row = server.wait_for_state(first, "gw-docker-1", {"succeeded", "failed", "rolled_back"}, timeout=120)
    assert row["state"] == "succeeded", agent.log()[-4000:]
    running = _containers(dockerd)
    assert set(running) == {"telemetry"}
    assert running["telemetry"]["State"] == "running"
    assert test_images.healthy_v1.split("@")[1] in running["telemetry"]["Image"] + str(running["telemetry"])
    started_v1 = running["telemetry"]["Id"]

    bad = server.deploy(_container_release(server, "2", test_images.unhealthy), "deviceId = 'gw-docker-1'")
    row = server.wait_for_state(bad, "gw-docker-1", {"succeeded", "failed", "rolled_back"}, timeout=120)
    assert row["state"] == "rolled_back", agent.log()[-4000:]
    assert "healthy" in (row.get("detail") or ""), row
    time.sleep(0.5)
    running = _containers(dockerd)
    assert set(running) == {"telemetry"}, running  # the new one is gone
    assert running["telemetry"]["Id"] == started_v1 and running["telemetry"]["State"] == "running"
    log = server.api.get(f"/deployments/{bad}/devices/gw-docker-1/log")
    assert log.status_code == 200 and "telemetry" in log.json()["log"]
