"""The agent's IoT Hub channel, through Azure's device SDK (``azure-iot-device``), against a real
Mosquitto standing in for the hub's MQTT endpoint (``tests/iothub_mqtt.py``): TLS on 8883 with the
test's own CA, the device reaching it as its gateway (``GatewayHostName=127.0.0.1``, as a device
behind an IoT Edge gateway does), the test playing the hub's side.

The hub scopes its ``$iothub/...`` topics to each device's connection; a shared broker does not, so
each test has a broker of its own."""

from __future__ import annotations

import base64
import gc
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetlift_agent.client import DeviceClient, ProtocolError
from fleetlift_agent.iothub import IotHubChannel
from fleetlift_wire.iothub import DeviceConnectionString

from ..iothub_mqtt import Hub, hub_broker
from ..mosquitto import PrivateBroker
from .runner_fakes import in_thread, make_runner, wait_until

pytest.importorskip("azure.iot.device", reason="the iothub extra (azure-iot-device) is not installed")

HOST = "acme-hub.azure-devices.net"
DEVICE = "gw-hub-1"
KEY = base64.b64encode(b"the device's own 32-byte key....").decode()
CONNECTION = f"HostName={HOST};DeviceId={DEVICE};SharedAccessKey={KEY};GatewayHostName=127.0.0.1"


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[tuple[PrivateBroker, Path]]:
    with hub_broker(tmp_path) as started:
        yield started


def channel_for(ca: Path, connection: str = CONNECTION) -> IotHubChannel:
    return IotHubChannel(connection, ca_file=ca, reconnect_seconds=1, clock=lambda: 1_800_000_000)


def test_the_device_connection_string_is_checked_without_echoing_the_key() -> None:
    parsed = DeviceConnectionString.parse(CONNECTION)
    assert (parsed.host_name, parsed.device_id, parsed.gateway_host_name) == (HOST, DEVICE, "127.0.0.1")
    assert KEY not in repr(parsed)
    for broken in (f"HostName={HOST};DeviceId={DEVICE}", f"{CONNECTION};ModuleId=m", "HostName"):
        with pytest.raises(ValueError) as caught:
            DeviceConnectionString.parse(broken)
        assert KEY not in str(caught.value)
    with pytest.raises(ValueError, match="not base64"):
        DeviceConnectionString.parse(f"HostName={HOST};DeviceId={DEVICE};SharedAccessKey=%%%")


def test_a_direct_method_and_a_desired_change_wake_the_update_loop(
    hub: tuple[PrivateBroker, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broker, ca = hub
    hub_side = Hub(broker.port)
    channel = channel_for(ca)
    runner, client, _ = make_runner(tmp_path, poll_interval=300, wakeup=channel, device_id=DEVICE)
    worker = in_thread(runner.run)
    try:
        with caplog.at_level(logging.DEBUG):
            # The first poll, and one more once connected (a request sent while offline may be waiting).
            wait_until(
                lambda: channel.connected.is_set() and len(client.polls) == 2, what="connected, two polls"
            )
            time.sleep(0.5)
            assert len(client.polls) == 2
            hub_side.call("fleetlift.update", "41")
            wait_until(lambda: len(client.polls) == 3, timeout=5, what="the poll after the direct method")
            wait_until(lambda: bool(hub_side.received("$iothub/methods/res/")), what="the method's answer")
            topic, payload = hub_side.received("$iothub/methods/res/")[0]
            assert topic == "$iothub/methods/res/200/?$rid=41" and json.loads(payload) == {"accepted": True}
            hub_side.call("reboot", "42")
            wait_until(lambda: len(hub_side.received("$iothub/methods/res/")) == 2, what="the refusal")
            assert hub_side.received("$iothub/methods/res/")[1][0] == "$iothub/methods/res/404/?$rid=42"
            hub_side.patch_desired({"other": 1})  # not fleetlift's: no poll
            hub_side.patch_desired({"fleetlift": {"update": {"deployment_id": "dep_1", "sequence": 1}}})
            wait_until(lambda: len(client.polls) == 4, timeout=5, what="the poll after the desired change")
            assert channel.desired_patches == 2 and len(client.polls) == 4 and channel.methods == 2
    finally:
        runner.request_stop()
        worker.join(5)
        channel.close()
        hub_side.close()
    assert not worker.is_alive()
    # Not even the SDK's debug log carries the key or the token made from it.
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "fleetlift.update" in text
    assert KEY not in text and "sig=" not in text


def test_reports_reach_the_reported_properties_and_logs_go_as_messages(
    hub: tuple[PrivateBroker, Path],
) -> None:
    broker, ca = hub
    hub_side = Hub(broker.port)
    channel = channel_for(ca)
    assert channel.report_state("installing") is False  # not connected yet: dropped, not queued
    channel.watch("default", DEVICE, lambda: None)
    try:
        wait_until(lambda: channel.connected.is_set(), what="connected")
        channel.observe("report", {"deployment_id": "dep_7", "status": "installing", "detail": "step 2 of 3"})
        channel.observe("notification", {"level": "info", "message": "hello"})
        channel.observe("log", {"deployment_id": "dep_7", "log": "line 1\nline 2"})
        wait_until(
            lambda: bool(hub_side.received("$iothub/twin/PATCH/properties/reported/")), what="the patch"
        )
        topic, payload = hub_side.received("$iothub/twin/PATCH/properties/reported/")[0]
        assert topic.startswith("$iothub/twin/PATCH/properties/reported/?$rid=")
        assert json.loads(payload) == {
            "fleetlift": {
                "state": "installing",
                "deployment_id": "dep_7",
                "detail": "step 2 of 3",
                "at": 1_800_000_000,
            }
        }
        prefix = f"devices/{DEVICE}/messages/events/"
        wait_until(lambda: len(hub_side.received(prefix)) == 2, what="the two device-to-cloud messages")
        (notice_topic, notice), (log_topic, log_body) = hub_side.received(prefix)
        assert "kind=notification" in notice_topic and json.loads(notice)["message"] == "hello"
        assert "%24.ct=application%2Fjson" in notice_topic and "%24.ce=utf-8" in notice_topic
        assert "kind=log" in log_topic and json.loads(log_body)["log"] == "line 1\nline 2"
    finally:
        channel.close()
        hub_side.close()


# paho (inside the SDK) leaves the socket of a dropped or refused connection to the garbage
# collector (ResourceWarning): it is collected here, inside the test, where the warning is expected.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_after_an_outage_the_device_reconnects_and_polls(
    hub: tuple[PrivateBroker, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broker, ca = hub
    channel = channel_for(ca)
    runner, client, _ = make_runner(tmp_path, poll_interval=300, wakeup=channel, device_id=DEVICE)
    worker = in_thread(runner.run)
    try:
        with caplog.at_level(logging.INFO, logger="fleetlift_agent"):
            wait_until(lambda: channel.connected.is_set() and len(client.polls) == 2, what="connected")
            broker.stop()
            wait_until(lambda: not channel.connected.is_set(), what="the outage noticed")
            assert channel.report_state("installing") is False
            broker.start()
            # Back: a request made while the device was away is looked for at once.
            wait_until(lambda: channel.connected.is_set(), timeout=30, what="reconnected")
            wait_until(lambda: len(client.polls) == 3, timeout=5, what="the poll after reconnecting")
        messages = [record.getMessage() for record in caplog.records]
        assert sum("polling as usual until it is back" in message for message in messages) == 1
        assert any("reachable again" in message for message in messages)
    finally:
        runner.request_stop()
        worker.join(5)
        channel.close()
        gc.collect()
    assert not worker.is_alive()


# paho (inside the SDK) leaves the socket of a dropped or refused connection to the garbage
# collector (ResourceWarning): it is collected here, inside the test, where the warning is expected.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_refused_connection_is_retried_and_logged_once_without_the_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A hub that admits nobody (no password file entry for the device): the SDK's CONNECT is refused.
    passwords = tmp_path / "passwords"
    passwords.write_text("")
    passwords.chmod(0o600)
    with hub_broker(tmp_path, f"allow_anonymous false\npassword_file {passwords}\n") as (broker, ca):
        channel = channel_for(ca)
        with caplog.at_level(logging.DEBUG):
            channel.watch("default", DEVICE, lambda: None)
            try:
                wait_until(
                    lambda: "CONNACK" in broker.log() or "not authorised" in broker.log(), what="a try"
                )
                wait_until(
                    lambda: any("cannot connect" in r.getMessage() for r in caplog.records),
                    timeout=30,
                    what="the outage logged",
                )
                time.sleep(4)  # 1 s, then 2 s: more attempts, no more warnings
                assert not channel.connected.is_set()
            finally:
                channel.close()
                gc.collect()
        attempts = broker.log().count("not authorised")
    warnings = [
        r.getMessage() for r in caplog.records if r.name == "fleetlift_agent" and r.levelno >= logging.WARNING
    ]
    assert len(warnings) == 1 and attempts >= 2, (warnings, attempts)
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert KEY not in text and "sig=" not in text


def test_without_the_sdk_the_agent_says_which_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "azure.iot.device", None)  # as if not installed
    with pytest.raises(RuntimeError, match=r"fleetlift\[agent,iothub\]"):
        IotHubChannel(CONNECTION)


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
