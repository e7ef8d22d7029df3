"""The agent's IoT Hub channel over a real MQTT broker standing in for the hub's MQTT endpoint
(Mosquitto, with a password file holding the device's expected SAS token, so a wrong user name or
signature is refused as the hub would): the direct method ``fleetlift.update`` is answered 200 and
wakes the update loop, another method is answered 404, a desired ``fleetlift`` change wakes it,
reports reach the twin's reported properties, and the key never reaches the log.

The hub scopes its ``$iothub/...`` topics to each device's connection; a shared broker does not, so
each test has a broker of its own."""

from __future__ import annotations

import base64
import gc
import hashlib
import hmac
import json
import logging
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fleetlift_agent.client import DeviceClient, ProtocolError
from fleetlift_agent.iothub import TOKEN_SECONDS, IotHubChannel
from fleetlift_wire.iothub import DeviceConnectionString

from ..mosquitto import PrivateBroker, private_broker
from .runner_fakes import in_thread, make_runner, wait_until

HOST = "acme-hub.azure-devices.net"
DEVICE = "gw-hub-1"
KEY = base64.b64encode(b"the device's own 32-byte key....").decode()
CONNECTION = f"HostName={HOST};DeviceId={DEVICE};SharedAccessKey={KEY}"
NOW = 1_800_000_000


def expected_password() -> str:
    """The SAS token the hub expects, computed here independently of fleetlift's code."""
    resource = urllib.parse.quote(f"{HOST}/devices/{DEVICE}".lower(), safe="").lower()
    expiry = NOW + TOKEN_SECONDS
    digest = hmac.new(base64.b64decode(KEY), f"{resource}\n{expiry}".encode(), hashlib.sha256).digest()
    signature = urllib.parse.quote(base64.b64encode(digest).decode(), safe="")
    return f"SharedAccessSignature sr={resource}&sig={signature}&se={expiry}"


@pytest.fixture
def hub_broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    passwords = tmp_path / "passwords"
    passwords.touch()
    passwords.chmod(0o600)
    username = f"{HOST}/{DEVICE}/?api-version=2021-04-12"
    subprocess.run(
        ["mosquitto_passwd", "-b", str(passwords), username, expected_password()], check=True, timeout=30
    )
    # The cloud side of the test logs in as "service".
    subprocess.run(
        ["mosquitto_passwd", "-b", str(passwords), "service", "service-pw"], check=True, timeout=30
    )
    config = f"allow_anonymous false\npassword_file {passwords}\n"
    with private_broker(tmp_path / "broker", config) as broker:
        yield broker


class Cloud:
    """The hub's side of the device's topics: calls methods, patches desired properties, and
    records what the device sends."""

    def __init__(self, port: int) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self.client.username_pw_set("service", "service-pw")
        self.client.on_message = lambda _c, _d, message: self.messages.append(
            (message.topic, message.payload)
        )
        self.client.connect("127.0.0.1", port)
        self.client.subscribe([("$iothub/methods/res/#", 1), ("$iothub/twin/PATCH/properties/reported/#", 1)])
        self.client.subscribe("devices/#", 1)
        self.client.loop_start()
        time.sleep(0.3)

    def _on_message(self, _client: object, _data: object, message: mqtt.MQTTMessage) -> None:
        self.messages.append((message.topic, message.payload))

    def call(self, name: str, request_id: str) -> None:
        self.client.publish(f"$iothub/methods/POST/{name}/?$rid={request_id}", json.dumps({}), qos=1)

    def patch_desired(self, patch: dict[str, object], version: int) -> None:
        self.client.publish(
            f"$iothub/twin/PATCH/properties/desired/?$version={version}", json.dumps(patch), qos=1
        )

    def received(self, prefix: str) -> list[tuple[str, bytes]]:
        return [(topic, payload) for topic, payload in list(self.messages) if topic.startswith(prefix)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def channel_for(broker: PrivateBroker, connection: str = CONNECTION) -> IotHubChannel:
    return IotHubChannel(connection, mqtt_host="127.0.0.1", port=broker.port, tls=False, clock=lambda: NOW)


def test_the_device_connection_string_is_checked_without_echoing_the_key() -> None:
    parsed = DeviceConnectionString.parse(CONNECTION)
    assert (parsed.host_name, parsed.device_id) == (HOST, DEVICE)
    assert KEY not in repr(parsed)
    assert parsed.mqtt_username == f"{HOST}/{DEVICE}/?api-version=2021-04-12"
    assert parsed.password(NOW + TOKEN_SECONDS) == expected_password()
    for broken in (f"HostName={HOST};DeviceId={DEVICE}", f"{CONNECTION};ModuleId=m", "HostName"):
        with pytest.raises(ValueError) as caught:
            DeviceConnectionString.parse(broken)
        assert KEY not in str(caught.value)
    with pytest.raises(ValueError, match="not base64"):
        DeviceConnectionString.parse(f"HostName={HOST};DeviceId={DEVICE};SharedAccessKey=%%%")


def test_a_direct_method_and_a_desired_change_wake_the_update_loop(
    hub_broker: PrivateBroker, tmp_path: Path
) -> None:
    channel = channel_for(hub_broker)
    runner, client, _ = make_runner(tmp_path, poll_interval=300, wakeup=channel, device_id=DEVICE)
    cloud = Cloud(hub_broker.port)
    worker = in_thread(runner.run)
    try:
        # The first poll, and one more once connected (a request sent while offline may be waiting).
        wait_until(lambda: channel.connected.is_set() and len(client.polls) == 2, what="connected, two polls")
        time.sleep(0.5)
        assert len(client.polls) == 2
        cloud.call("fleetlift.update", "41")
        wait_until(lambda: len(client.polls) == 3, timeout=5, what="the poll after the direct method")
        wait_until(lambda: bool(cloud.received("$iothub/methods/res/")), what="the method's answer")
        topic, payload = cloud.received("$iothub/methods/res/")[0]
        assert topic == "$iothub/methods/res/200/?$rid=41" and json.loads(payload) == {"accepted": True}
        cloud.call("reboot", "42")
        wait_until(lambda: len(cloud.received("$iothub/methods/res/")) == 2, what="the refusal")
        assert cloud.received("$iothub/methods/res/")[1][0] == "$iothub/methods/res/404/?$rid=42"
        cloud.patch_desired({"other": 1}, version=2)  # not fleetlift's: no poll
        cloud.patch_desired({"fleetlift": {"update": {"deployment_id": "dep_1", "sequence": 1}}}, version=3)
        wait_until(lambda: len(client.polls) == 4, timeout=5, what="the poll after the desired change")
        assert channel.desired_patches == 2 and len(client.polls) == 4
    finally:
        runner.request_stop()
        worker.join(5)
        cloud.close()
    assert not worker.is_alive()


def test_reports_reach_the_reported_properties(hub_broker: PrivateBroker) -> None:
    channel = channel_for(hub_broker)
    cloud = Cloud(hub_broker.port)
    channel.watch("default", DEVICE, lambda: None)
    try:
        wait_until(lambda: channel.connected.is_set(), what="connected")
        channel.observe("report", {"deployment_id": "dep_7", "status": "installing", "detail": "step 2 of 3"})
        channel.observe("notification", {"level": "info", "message": "hello"})
        wait_until(lambda: bool(cloud.received("$iothub/twin/PATCH/properties/reported/")), what="the patch")
        topic, payload = cloud.received("$iothub/twin/PATCH/properties/reported/")[0]
        assert topic.startswith("$iothub/twin/PATCH/properties/reported/?$rid=")
        assert json.loads(payload) == {
            "fleetlift": {"state": "installing", "deployment_id": "dep_7", "detail": "step 2 of 3", "at": NOW}
        }
        wait_until(lambda: bool(cloud.received(f"devices/{DEVICE}/messages/events/")), what="the message")
        event_topic, body = cloud.received(f"devices/{DEVICE}/messages/events/")[0]
        assert "kind=notification" in event_topic and json.loads(body)["message"] == "hello"
    finally:
        channel.close()
        cloud.close()


# paho leaves the socket of a refused connection to the garbage collector (ResourceWarning): it is
# collected here, inside the test, where the warning is expected.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_wrong_key_is_refused_and_never_logged(
    hub_broker: PrivateBroker, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = base64.b64encode(b"not the device's key, 32 bytes..").decode()
    channel = channel_for(hub_broker, f"HostName={HOST};DeviceId={DEVICE};SharedAccessKey={wrong}")
    with caplog.at_level(logging.INFO, logger="fleetlift_agent"):
        channel.watch("default", DEVICE, lambda: None)
        try:
            wait_until(lambda: any("refused" in r.getMessage() for r in caplog.records), what="the refusal")
            assert not channel.connected.is_set()
        finally:
            channel.close()
            gc.collect()
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert wrong not in text and "SharedAccessSignature" not in text


class AnsweringClient(DeviceClient):
    """The device client with the server's answers given here (its HTTP layer is tested elsewhere)."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.observers = []

    def _call(self, method: str, path: str, **_kw: Any) -> tuple[int, dict[str, str], bytes]:
        return self.status, {}, b""


def test_what_the_server_took_is_told_to_the_observers_and_a_failing_one_changes_nothing() -> None:
    seen: list[tuple[str, dict[str, Any]]] = []

    def broken(kind: str, fields: dict[str, Any]) -> None:
        raise RuntimeError("the hub side channel failed")

    client = AnsweringClient(204)
    client.observers += [broken, lambda kind, fields: seen.append((kind, fields))]
    client.report("dep_1", "installing", "half way")
    client.upload_log("dep_1", "line 1\nline 2")
    client.notify("warning", "disk 91% full")
    assert seen == [
        ("report", {"deployment_id": "dep_1", "status": "installing", "detail": "half way"}),
        ("log", {"deployment_id": "dep_1", "log": "line 1\nline 2"}),
        ("notification", {"level": "warning", "message": "disk 91% full"}),
    ]
    refused = AnsweringClient(500)
    refused.observers.append(lambda kind, fields: seen.append((kind, fields)))
    with pytest.raises(ProtocolError):
        refused.notify("info", "not taken")
    assert len(seen) == 3  # what the server did not take is not told
