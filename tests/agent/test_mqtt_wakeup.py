"""The agent's MQTT wake-up against real Mosquitto: a "check" on the device's own topic makes the
update loop poll at once; other devices' topics do not; a broker that is down or restarts changes
nothing but the speed."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetlift.channels.mqtt import MqttChannel
from fleetlift_agent.mqtt import CheckSubscriber
from fleetlift_wire.mqtt import BrokerAddress

from ..mosquitto import ensure_local_broker, private_broker, tls_files
from ..ports import free_port
from .runner_fakes import in_thread, make_runner, wait_until


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def warnings(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= logging.WARNING]


@pytest.fixture
def agent_log() -> Iterator[Records]:
    logger = logging.getLogger("fleetlift_agent")
    handler, level = Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def publish(url: str, tenant: str, devices: list[str]) -> int:
    """What the server does when a wave opens: its own MQTT channel, for real."""

    async def scenario() -> int:
        channel = MqttChannel(url)
        assert channel.wait_connected(10)
        sent = await channel.notify(tenant, devices)
        await channel.close()
        return sent

    return asyncio.run(scenario())


def test_the_broker_url_is_shown_without_its_password() -> None:
    address = BrokerAddress.parse("mqtts://gw-0042:dev%21ce@broker.example.com")
    assert (address.port, address.username, address.password) == (8883, "gw-0042", "dev!ce")
    assert str(address) == "mqtts://gw-0042@broker.example.com:8883"
    with pytest.raises(ValueError):
        BrokerAddress.parse("tcp://broker")


def test_a_check_on_the_devices_own_topic_wakes_it_and_others_do_not() -> None:
    url = ensure_local_broker()
    woken: list[float] = []
    subscriber = CheckSubscriber(url)
    tenant = f"tenant-{uuid.uuid4().hex[:8]}"
    subscriber.watch(tenant, "gw-own", lambda: woken.append(time.monotonic()))
    subscriber.watch(tenant, "gw-other", lambda: None)  # a second call changes nothing
    try:
        assert subscriber.subscribed.wait(10)
        assert subscriber.topic == f"fleetlift/{tenant}/devices/gw-own/check"
        wait_until(lambda: len(woken) == 1, what="the catch-up poll after subscribing")
        assert publish(url, tenant, ["gw-other", "gw-third"]) == 2
        assert publish(url, tenant + "-other", ["gw-own"]) == 1
        time.sleep(0.5)
        assert len(woken) == 1
        assert publish(url, tenant, ["gw-own"]) == 1
        wait_until(lambda: len(woken) == 2, what="the wake-up")
        assert subscriber.messages == 1
    finally:
        subscriber.close()


def test_the_update_loop_polls_at_once_when_woken(tmp_path: Path) -> None:
    """A poll interval of 300 s, and yet the second poll comes right after the message."""
    url = ensure_local_broker()
    device = f"gw-{uuid.uuid4().hex[:8]}"  # the shared broker: a client ID of its own
    subscriber = CheckSubscriber(url)
    runner, client, _ = make_runner(tmp_path, poll_interval=300, wakeup=subscriber, device_id=device)
    worker = in_thread(runner.run)
    try:
        # The first poll, then one more as soon as the subscription stands (a message sent in
        # between would have been missed), then nothing for 300 s...
        wait_until(lambda: len(client.polls) == 2 and subscriber.subscribed.is_set(), what="two polls")
        assert subscriber.topic == f"fleetlift/default/devices/{device}/check"  # tenant: the client's
        time.sleep(1)
        assert len(client.polls) == 2
        # ... unless the server says so.
        sent_at = time.monotonic()
        assert publish(url, "default", [device]) == 1
        wait_until(lambda: len(client.polls) == 3, timeout=5, what="the poll after the message")
        assert client.polls[2] - sent_at < 3
    finally:
        runner.request_stop()
        worker.join(5)
    assert not worker.is_alive(), "request_stop did not end the wait"
    assert subscriber._client is False  # the runner closed it on the way out


def test_with_the_broker_down_the_agent_polls_as_usual(tmp_path: Path, agent_log: Records) -> None:
    subscriber = CheckSubscriber(f"mqtt://gw-1:s3cret-pw@127.0.0.1:{free_port()}")
    runner, client, _ = make_runner(tmp_path, poll_interval=1, wakeup=subscriber)
    worker = in_thread(runner.run)
    try:
        wait_until(lambda: len(client.polls) >= 3, timeout=15, what="three polls")
    finally:
        runner.request_stop()
        worker.join(5)
    assert not worker.is_alive()
    warnings = agent_log.warnings()
    assert len(warnings) == 1, warnings
    assert "gw-1@127.0.0.1" in warnings[0]
    assert not any("s3cret" in record.getMessage() for record in agent_log.records)


def test_the_agent_subscribes_again_after_the_broker_restarts(tmp_path: Path, agent_log: Records) -> None:
    with private_broker(tmp_path / "broker") as broker:
        woken: list[float] = []
        subscriber = CheckSubscriber(broker.url)
        subscriber.watch("default", "gw-1", lambda: woken.append(time.monotonic()))
        try:
            assert subscriber.subscribed.wait(10)
            wait_until(lambda: len(woken) == 1, what="the catch-up poll after subscribing")
            broker.stop()
            wait_until(lambda: not subscriber.subscribed.is_set(), what="the disconnect")
            broker.start()
            assert subscriber.subscribed.wait(15), "no new subscription"
            assert publish(broker.url, "default", ["gw-1"]) == 1
            wait_until(lambda: len(woken) == 2, what="the wake-up after the restart")
        finally:
            subscriber.close()
    assert len(agent_log.warnings()) == 1  # one outage, one warning


def test_over_mqtts_with_a_private_ca(tmp_path: Path) -> None:
    ca, cert, key = tls_files(tmp_path / "tls")
    config = f"allow_anonymous true\ncertfile {cert}\nkeyfile {key}\n"
    with private_broker(tmp_path / "broker", config) as broker:
        url = f"mqtts://127.0.0.1:{broker.port}?ca={ca}"
        woken: list[float] = []
        subscriber = CheckSubscriber(url)
        subscriber.watch("default", "gw-tls", lambda: woken.append(time.monotonic()))
        try:
            assert subscriber.subscribed.wait(10), broker.log()
            wait_until(lambda: len(woken) == 1, what="the catch-up poll after subscribing")
            assert publish(url, "default", ["gw-tls"]) == 1
            wait_until(lambda: len(woken) == 2, what="the wake-up over TLS")
        finally:
            subscriber.close()
