"""Device channels: how devices hear that a rollout released them (``ports.DeviceChannel``).

The long poll is always on: every channel wakes this process's waiting polls first. With
``FLEETLIFT_DEVICE_CHANNEL=mqtt`` each released device also gets a "check now" message on its own
MQTT topic (``channels.mqtt``; docs/mqtt.md)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fleetlift.channels.longpoll import LongPollChannel
from fleetlift.config import Settings
from fleetlift.device_api.poll import PollNotifier
from fleetlift.ports import DeviceChannel


class AlsoLongPoll:
    """Another channel, with this process's long polls woken too; counts the other's messages."""

    def __init__(self, longpoll: LongPollChannel, other: DeviceChannel) -> None:
        self.longpoll = longpoll
        self.other = other

    async def notify(self, tenant_id: str, device_ids: Sequence[str]) -> int:
        """Wake the long polls, then send through the other channel; how many it sent."""
        await self.longpoll.notify(tenant_id, device_ids)
        return await self.other.notify(tenant_id, device_ids)

    async def close(self) -> None:
        await self.other.close()


def _longpoll(settings: Settings, notifier: PollNotifier) -> DeviceChannel:
    return LongPollChannel(notifier)


def _mqtt(settings: Settings, notifier: PollNotifier) -> DeviceChannel:
    from fleetlift.channels.mqtt import MqttChannel

    if settings.mqtt_url is None:  # the settings validate this; kept for a clear error
        raise ValueError("FLEETLIFT_DEVICE_CHANNEL=mqtt needs FLEETLIFT_MQTT_URL")
    channel = MqttChannel(settings.mqtt_url.get_secret_value(), topic_prefix=settings.mqtt_topic_prefix)
    return AlsoLongPoll(LongPollChannel(notifier), channel)


DEVICE_CHANNELS: dict[str, Callable[[Settings, PollNotifier], DeviceChannel]] = {
    "longpoll": _longpoll,
    "mqtt": _mqtt,
}


def build_device_channel(settings: Settings, poll_notifier: PollNotifier) -> DeviceChannel:
    """The device channel the settings name, waking ``poll_notifier``'s long polls in any case."""
    return DEVICE_CHANNELS[settings.device_channel](settings, poll_notifier)


__all__ = ["DEVICE_CHANNELS", "AlsoLongPoll", "LongPollChannel", "build_device_channel"]
