"""Picking the device channel from settings, and the long-poll and in-memory channels."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from fleetlift.channels import AlsoLongPoll, LongPollChannel, build_device_channel
from fleetlift.channels.memory import MemoryChannel
from fleetlift.config import Settings
from fleetlift.device_api.poll import PollNotifier


def test_the_long_poll_is_the_default_and_wakes_the_tenants_waiting_polls() -> None:
    notifier = PollNotifier()
    channel = build_device_channel(Settings(), notifier)
    assert isinstance(channel, LongPollChannel)

    async def scenario() -> tuple[bool, bool, int, int]:
        other = asyncio.create_task(notifier.wait("other", notifier.generation("other"), 0.3))
        mine = asyncio.create_task(notifier.wait("default", notifier.generation("default"), 5))
        await asyncio.sleep(0.05)
        told = await channel.notify("default", ["gw-1", "gw-2"])
        nobody = await channel.notify("default", [])
        await channel.close()
        return await mine, await other, told, nobody

    woke_mine, woke_other, told, nobody = asyncio.run(scenario())
    assert (woke_mine, woke_other, told, nobody) == (True, False, 2, 0)


def test_mqtt_needs_a_broker_url_and_keeps_its_password_secret() -> None:
    with pytest.raises(ValidationError, match="FLEETLIFT_MQTT_URL"):
        Settings(device_channel="mqtt")
    with pytest.raises(ValidationError, match="mqtt://"):
        Settings(device_channel="mqtt", mqtt_url="http://broker")
    with pytest.raises(ValidationError, match="wildcards"):
        Settings(mqtt_topic_prefix="fleet/#")
    settings = Settings(device_channel="mqtt", mqtt_url="mqtt://server:pw-123@127.0.0.1:1")
    assert "pw-123" not in repr(settings) and "pw-123" not in str(settings.public_dict())


def test_mqtt_also_wakes_the_long_polls() -> None:
    notifier = PollNotifier()
    channel = build_device_channel(
        Settings(device_channel="mqtt", mqtt_url="mqtt://127.0.0.1:1", mqtt_topic_prefix="acme/fleet"),
        notifier,
    )
    assert isinstance(channel, AlsoLongPoll)
    assert channel.other.topic_prefix == "acme/fleet"  # type: ignore[attr-defined]

    async def scenario() -> tuple[bool, int]:
        waiting = asyncio.create_task(notifier.wait("default", notifier.generation("default"), 5))
        await asyncio.sleep(0.05)
        sent = await channel.notify("default", ["gw-1"])  # no broker on port 1: nothing published
        await channel.close()
        return await waiting, sent

    assert asyncio.run(scenario()) == (True, 0)


def test_the_memory_channel_remembers_what_it_sent() -> None:
    channel = MemoryChannel()

    async def scenario() -> int:
        count = await channel.notify("t1", ["a", "b"])
        await channel.notify("t2", ["c"])
        await channel.notify("t1", [])
        await channel.close()
        return count

    assert asyncio.run(scenario()) == 2
    assert channel.devices() == ["a", "b", "c"] and channel.devices("t1") == ["a", "b"]
    assert channel.closed
