"""The MQTT device channel against real Mosquitto brokers: what it publishes, that a big fan-out
leaves the event loop free, outages and reconnects, TLS, and the ACL example of docs/mqtt.md."""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetlift.channels.mqtt import MqttChannel
from fleetlift_wire.mqtt import BrokerAddress, check_topic

from ..mosquitto import Listener, ensure_local_broker, private_broker, tls_files
from ..ports import free_port

DOCS = Path(__file__).resolve().parents[2] / "docs" / "mqtt.md"


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, level: int = logging.DEBUG) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level]


@pytest.fixture
def channel_log() -> Iterator[Records]:
    """The channel's log records (the app's logging setup may stop them reaching caplog)."""
    logger = logging.getLogger("fleetlift.channels.mqtt")
    handler, level = Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture(scope="module")
def broker_url() -> str:
    return ensure_local_broker()


def tenant() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def connected(url: str, **options: float) -> MqttChannel:
    channel = MqttChannel(url, **options)  # type: ignore[arg-type]
    assert channel.wait_connected(10), "the channel did not connect"
    return channel


def test_the_broker_url_is_parsed_and_shown_without_its_password() -> None:
    address = BrokerAddress.parse("mqtts://fleetlift-server:p%40ss%2Fw0rd@broker.example.com?ca=/etc/ca.pem")
    assert (address.host, address.port, address.tls) == ("broker.example.com", 8883, True)
    assert (address.username, address.password, address.ca_file) == (
        "fleetlift-server",
        "p@ss/w0rd",
        "/etc/ca.pem",
    )
    assert str(address) == "mqtts://fleetlift-server@broker.example.com:8883"
    assert BrokerAddress.parse("mqtt://broker").port == 1883
    with pytest.raises(ValueError, match="mqtt://"):
        BrokerAddress.parse("http://broker")


def test_each_released_device_gets_check_on_its_own_topic(broker_url: str) -> None:
    name = tenant()
    listener = Listener(1883, [f"fleetlift/{name}/#"])
    listener.wait_subscribed()
    channel = connected(broker_url)

    async def scenario() -> tuple[int, int, int]:
        sent = await channel.notify(name, ["gw-1", "gw-2", "gw-3"])
        nothing = await channel.notify(name, [])
        odd = await channel.notify(name, ["bad/id", "wild+", "gw-4"])  # not a topic level: skipped
        await channel.close()
        return sent, nothing, odd

    try:
        assert asyncio.run(scenario()) == (3, 0, 1)
        received = listener.wait_for(4)
    finally:
        listener.close()
    assert sorted(topic for topic, _, _ in received) == [
        check_topic("fleetlift", name, device) for device in ("gw-1", "gw-2", "gw-3", "gw-4")
    ]
    assert {payload for _, payload, _ in received} == {b'{"check":true}'}
    assert {qos for _, _, qos in received} == {1}


def test_a_notify_right_after_start_waits_for_the_first_connection(broker_url: str) -> None:
    """A reconciler's first pass may come before the broker answered: the wave is not dropped."""
    name = tenant()
    listener = Listener(1883, [f"fleetlift/{name}/#"])
    listener.wait_subscribed()

    async def scenario() -> int:
        channel = MqttChannel(broker_url)  # not connected yet
        sent = await channel.notify(name, ["gw-early"])
        await channel.close()
        return sent

    try:
        assert asyncio.run(scenario()) == 1
        assert [topic for topic, _, _ in listener.wait_for(1)] == [check_topic("fleetlift", name, "gw-early")]
    finally:
        listener.close()


def test_a_wave_of_20000_leaves_the_event_loop_free(broker_url: str, tmp_path: Path) -> None:
    if shutil.which("mosquitto_sub") is None:
        pytest.skip("mosquitto_sub is not installed (Debian's mosquitto-clients)")
    name = tenant()
    # mosquitto_sub counts: a Python subscriber in this process falls behind the fan-out, and the
    # broker drops what overflows its queue for one slow client (each real device has its own).
    received = tmp_path / "received.txt"
    with received.open("wb") as output:
        subscriber = subprocess.Popen(
            ["mosquitto_sub", "-h", "127.0.0.1", "-t", f"fleetlift/{name}/#", "-q", "1", "-F", "%t"],
            stdout=output,
        )
    try:
        channel = connected(broker_url, window=500)
        deadline = time.monotonic() + 10
        while not received.read_bytes():  # until the subscription is in place
            asyncio.run(channel.notify(name, ["probe"]))
            time.sleep(0.1)
            assert time.monotonic() < deadline, "mosquitto_sub received nothing"
        devices = [f"dev-{i:05d}" for i in range(20_000)]

        async def scenario() -> tuple[int, float, int]:
            lags: list[float] = []
            done = asyncio.Event()

            async def ticker() -> None:
                while not done.is_set():
                    started = time.perf_counter()
                    await asyncio.sleep(0.005)
                    lags.append(time.perf_counter() - started - 0.005)

            ticking = asyncio.create_task(ticker())
            sent = await channel.notify(name, devices)
            done.set()
            await ticking
            await channel.close()
            return sent, max(lags), len(lags)

        sent, worst_lag, ticks = asyncio.run(scenario())
        deadline = time.monotonic() + 20
        while len(set(received.read_text().split()) - {f"fleetlift/{name}/devices/probe/check"}) < len(
            devices
        ):
            assert time.monotonic() < deadline, "not every message arrived"
            time.sleep(0.1)
    finally:
        subscriber.terminate()
        subscriber.wait(10)
    assert sent == len(devices)
    topics = set(received.read_text().split())
    assert topics == {check_topic("fleetlift", name, d) for d in [*devices, "probe"]}
    # The loop kept ticking every few milliseconds while the fan-out ran on the worker thread.
    assert ticks > 20
    assert worst_lag < 0.25, worst_lag


def test_an_unreachable_broker_drops_notifications_and_logs_once_without_the_password(
    channel_log: Records,
) -> None:
    channel = MqttChannel(f"mqtt://fleetlift-server:s3cret-pw@127.0.0.1:{free_port()}")

    async def scenario() -> list[int]:
        results = []
        for _ in range(3):
            started = time.monotonic()
            results.append(await channel.notify("default", ["gw-1", "gw-2"]))
            assert time.monotonic() - started < 0.5  # nothing waits for a broker that is not there
        await channel.close()
        return results

    deadline = time.monotonic() + 15
    while not channel_log.messages(logging.WARNING):  # paho's network thread tried and failed
        assert time.monotonic() < deadline, "no connection attempt failed"
        time.sleep(0.05)
    assert asyncio.run(scenario()) == [0, 0, 0]
    warnings = channel_log.messages(logging.WARNING)
    assert len(warnings) == 1, warnings
    assert "fleetlift-server@127.0.0.1" in warnings[0]
    assert not any("s3cret" in message for message in channel_log.messages())


def test_the_channel_reconnects_after_the_broker_restarts(tmp_path: Path, channel_log: Records) -> None:
    with private_broker(tmp_path / "broker") as broker:
        channel = connected(broker.url)
        listener = Listener(broker.port, ["fleetlift/#"])
        listener.wait_subscribed()

        async def notify(device: str) -> int:
            return await channel.notify("default", [device])

        assert asyncio.run(notify("before")) == 1
        listener.close()
        broker.stop()
        deadline = time.monotonic() + 10
        while channel.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert asyncio.run(notify("during")) == 0  # dropped: the device will poll
        assert asyncio.run(notify("during")) == 0
        broker.start()
        assert channel.wait_connected(15), "no reconnect"
        listener = Listener(broker.port, ["fleetlift/#"])
        listener.wait_subscribed()
        assert asyncio.run(notify("after")) == 1
        received = listener.wait_for(1)
        listener.close()
        asyncio.run(channel.close())
    assert [topic for topic, _, _ in received] == ["fleetlift/default/devices/after/check"]
    warnings = channel_log.messages(logging.WARNING)
    assert len(warnings) == 1, warnings  # one outage, one warning
    assert any("again" in message for message in channel_log.messages(logging.INFO))


# paho leaves the socket of a failed TLS handshake to the garbage collector (ResourceWarning).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_mqtts_checks_the_broker_certificate(tmp_path: Path, channel_log: Records) -> None:
    ca, cert, key = tls_files(tmp_path / "tls")
    config = f"allow_anonymous true\ncertfile {cert}\nkeyfile {key}\n"
    with private_broker(tmp_path / "broker", config) as broker:
        trusted = MqttChannel(f"mqtts://127.0.0.1:{broker.port}?ca={ca}")
        assert trusted.wait_connected(10), broker.log()

        async def scenario() -> int:
            sent = await trusted.notify("default", ["gw-tls"])
            await trusted.close()
            return sent

        assert asyncio.run(scenario()) == 1
        # Without the private CA the broker's certificate is not trusted: no connection.
        untrusted = MqttChannel(f"mqtts://127.0.0.1:{broker.port}")
        assert not untrusted.wait_connected(2)
        asyncio.run(untrusted.close())
    assert any("cannot connect" in m or "disconnected" in m for m in channel_log.messages(logging.WARNING))


def _docs_block(marker: str) -> str:
    """The fenced block of docs/mqtt.md whose first line is ``marker``."""
    for block in re.findall(r"```[a-z]*\n(.*?)```", DOCS.read_text(), flags=re.S):
        if block.startswith(marker):
            return str(block)
    raise AssertionError(f"docs/mqtt.md has no block starting with {marker!r}")


def test_the_documented_acl_lets_each_device_read_only_its_own_topic(tmp_path: Path) -> None:
    """docs/mqtt.md's mosquitto.conf, ACL file and mosquitto_passwd lines, as written."""
    directory = tmp_path / "broker"
    directory.mkdir()
    passwords, acl = directory / "fleetlift.passwd", directory / "fleetlift.acl"
    acl.write_text(_docs_block("# /etc/mosquitto/fleetlift.acl"))
    for line in _docs_block("mosquitto_passwd").splitlines():
        command = line.split("#")[0].replace("/etc/mosquitto/fleetlift.passwd", str(passwords))
        subprocess.run(["bash", "-c", command], check=True, capture_output=True, timeout=30)
    subprocess.run(
        ["mosquitto_passwd", "-b", str(passwords), "gw-0043", "other-secret"], check=True, timeout=30
    )
    config_lines = []
    for line in _docs_block("# /etc/mosquitto/conf.d/fleetlift.conf").splitlines():
        if line.startswith(("listener", "certfile", "keyfile")):
            continue  # the test's own plain listener on loopback instead of TLS on 8883
        config_lines.append(
            line.replace("/etc/mosquitto/fleetlift.passwd", str(passwords)).replace(
                "/etc/mosquitto/fleetlift.acl", str(acl)
            )
        )
    with private_broker(directory, "\n".join(config_lines) + "\n") as broker:
        own = "fleetlift/default/devices/gw-0042/check"
        other = "fleetlift/default/devices/gw-0043/check"
        device = Listener(broker.port, [own, other], username="gw-0042", password="device-secret")
        neighbour = Listener(broker.port, [other], username="gw-0043", password="other-secret")
        anonymous = Listener(broker.port, ["fleetlift/#"])
        wrong = Listener(broker.port, [own], username="gw-0042", password="guess")
        server_reads = Listener(
            broker.port, ["fleetlift/#"], username="fleetlift-server", password="server-secret"
        )
        for listener in (device, neighbour, server_reads):
            listener.wait_subscribed()
        anonymous.wait_connected()
        wrong.wait_connected()
        channel = connected(f"mqtt://fleetlift-server:server-secret@127.0.0.1:{broker.port}")

        async def scenario() -> int:
            sent = await channel.notify("default", ["gw-0042", "gw-0043"])
            await channel.close()
            return sent

        assert asyncio.run(scenario()) == 2
        # A device may not publish, not even "check" to its neighbour.
        device.client.publish(other, b'{"check":true}', qos=1).wait_for_publish(5)
        assert sorted(neighbour.wait_for(1)) == [(other, b'{"check":true}', 1)]
        time.sleep(0.5)  # anything else that was going to arrive has arrived
        received = {
            "device": device.topics_received(),
            "neighbour": neighbour.topics_received(),
            "server": server_reads.topics_received(),
        }
        for listener in (device, neighbour, anonymous, wrong, server_reads):
            listener.close()
        refusals = (anonymous.refused, wrong.refused)
    assert received == {"device": [own], "neighbour": [other], "server": []}
    assert all(refusal is not None for refusal in refusals), refusals
