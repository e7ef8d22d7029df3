"""Mosquitto standing in for Azure IoT Hub's MQTT endpoint, for the agent's IoT Hub channel.

Azure's device SDK always speaks MQTT over TLS on port 8883, so the broker listens there with a
certificate of the test's own CA (devices name it as their gateway: ``GatewayHostName=127.0.0.1``),
and the test plays the hub's side on a second, plain listener (:class:`Hub`) on the documented
``$iothub/...`` topics. One port means one such broker at a time on the machine: :func:`port_8883`
is a file lock for it."""

from __future__ import annotations

import fcntl
import json
import socket
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from .mosquitto import PrivateBroker, private_broker, tls_files

HUB_PORT = 8883  # fixed by the SDK
LOCK = Path("/tmp/fleetlift-tests-mqtt-8883.lock")


@contextmanager
def port_8883() -> Iterator[None]:
    """The machine's port 8883, for one test at a time (pytest-xdist runs two)."""
    with LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", HUB_PORT)) == 0:
                    pytest.fail("something else listens on 127.0.0.1:8883, which the IoT Hub SDK must use")
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def hub_config(tls_dir: Path, extra: str = "allow_anonymous true\n") -> tuple[str, Path]:
    ca, cert, key = tls_files(tls_dir)
    config = f"{extra}listener {HUB_PORT} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
    return config, ca


class Hub:
    """The hub's side of the device's topics: calls methods, patches desired properties, answers
    twin requests, and records what the device sends."""

    def __init__(self, port: int) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.desired: dict[str, Any] = {"$version": 1}
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: self._ready.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(
            [
                ("$iothub/methods/res/#", 1),
                ("$iothub/twin/PATCH/properties/reported/#", 1),
                ("$iothub/twin/GET/#", 1),
                ("devices/#", 1),
            ]
        )
        self.client.loop_start()
        assert self._ready.wait(10), "the hub side did not subscribe"

    def _on_message(self, client: mqtt.Client, _data: object, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((message.topic, message.payload))
        request_id = urllib.parse.parse_qs(message.topic.partition("?")[2]).get("$rid", [""])[0]
        if message.topic.startswith("$iothub/twin/PATCH/properties/reported/"):
            client.publish(f"$iothub/twin/res/204/?$rid={request_id}&$version=2", b"", qos=0)
        elif message.topic.startswith("$iothub/twin/GET/"):
            twin = {"desired": self.desired, "reported": {"$version": 1}}
            client.publish(f"$iothub/twin/res/200/?$rid={request_id}", json.dumps(twin), qos=0)

    def call(self, name: str, request_id: str) -> None:
        self.client.publish(f"$iothub/methods/POST/{name}/?$rid={request_id}", json.dumps({}), qos=1)

    def patch_desired(self, patch: dict[str, Any]) -> None:
        self.desired = {**self.desired, **patch, "$version": int(self.desired["$version"]) + 1}
        body = {**patch, "$version": self.desired["$version"]}
        self.client.publish(
            f"$iothub/twin/PATCH/properties/desired/?$version={self.desired['$version']}",
            json.dumps(body),
            qos=1,
        )

    def received(self, prefix: str) -> list[tuple[str, bytes]]:
        with self._lock:
            return [(topic, payload) for topic, payload in self.messages if topic.startswith(prefix)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextmanager
def hub_broker(
    directory: Path, access: str = "allow_anonymous true\n"
) -> Iterator[tuple[PrivateBroker, Path]]:
    """A Mosquitto listening as the hub on 127.0.0.1:8883 (TLS) and for the hub's side on a plain
    port of its own: (the broker, the CA certificate its TLS certificate is signed with)."""
    with port_8883():
        config, ca = hub_config(directory / "tls", access)
        with private_broker(directory / "broker", config) as broker:
            yield broker, ca
