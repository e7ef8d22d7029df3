"""The real server, the real agent process with Azure IoT Hub as its channel (Azure's device SDK, the
``iothub`` extra), and a real Mosquitto standing in for the hub's MQTT endpoint
(``tests/iothub_mqtt.py``): an agent that polls only every 300 seconds installs a new deployment
within seconds of the hub's ``fleetlift.update`` direct method, and its progress reaches the
twin's reported properties; the device key given in the environment never reaches the log."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest

from ..iothub_mqtt import Hub, hub_broker
from .agent_process import AgentProcess, code_package
from .harness import start_server

pytest.importorskip("azure.iot.device", reason="the iothub extra (azure-iot-device) is not installed")

pytestmark = pytest.mark.e2e

DEVICE = "gw-iothub-e2e"
KEY = base64.b64encode(b"e2e device key, thirty-two bytes").decode()


def _reported_states(hub: Hub) -> list[str]:
    states = []
    for _topic, payload in hub.received("$iothub/twin/PATCH/properties/reported/"):
        states.append(json.loads(payload)["fleetlift"]["state"])
    return states


def test_a_direct_method_through_the_hub_brings_the_update_at_once(
    tmp_path: Path, agents: list[AgentProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    connection = ";".join(
        [
            "HostName=acme-e2e.azure-devices.net",
            f"DeviceId={DEVICE}",
            f"SharedAccessKey={KEY}",
            "GatewayHostName=127.0.0.1",
        ]
    )
    with hub_broker(tmp_path / "hub") as (broker, ca):
        hub = Hub(broker.port)
        try:
            for server in start_server(tmp_path / "server"):
                monkeypatch.setenv("FLEETLIFT_AGENT_IOTHUB_CONNECTION_STRING", connection)
                agent = AgentProcess(
                    server.base,
                    tmp_path / DEVICE,
                    DEVICE,
                    "--enrollment-token",
                    server.enrollment_token(),
                    "--poll-interval",
                    "300",
                    "--iothub-ca-file",
                    str(ca),
                )
                agents.append(agent.start())
                server.wait_for_device(DEVICE)
                agent.wait_for_log(f"connected to IoT Hub acme-e2e.azure-devices.net as device {DEVICE}")

                artifact = server.upload(code_package("1.0.0"), "app-1.0.0.tar.gz", "1.0.0")
                release_id = server.release(
                    "app",
                    "1.0.0",
                    [
                        {
                            "type": "file",
                            "artifact_id": artifact["id"],
                            "installer": "package",
                            "target": "app",
                        }
                    ],
                )
                deployment = server.deploy(release_id, f"deviceId = '{DEVICE}'")
                time.sleep(2)
                assert server.device_state(deployment, DEVICE)["state"] == "pending"  # type: ignore[index]

                asked = time.monotonic()
                hub.call("fleetlift.update", "1")
                row = server.wait_for_state(
                    deployment, DEVICE, {"succeeded", "failed", "rolled_back"}, timeout=60
                )
                assert row["state"] == "succeeded", agent.log()[-3000:]
                assert time.monotonic() - asked < 30, "the agent waited for its poll instead of the method"
                assert (
                    agent.data_dir / "packages" / "app" / "current" / "app.txt"
                ).read_text() == "app 1.0.0\n"
                assert hub.received("$iothub/methods/res/")[0][0] == "$iothub/methods/res/200/?$rid=1"
                deadline = time.monotonic() + 10
                while "succeeded" not in _reported_states(hub) and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert "downloading" in _reported_states(hub) and "succeeded" in _reported_states(hub), (
                    _reported_states(hub)
                )
                log = agent.log()
                assert "IoT Hub direct method fleetlift.update: polling now" in log
                assert KEY not in log and "sig=" not in log
        finally:
            hub.close()
