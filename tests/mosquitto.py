"""Real Mosquitto brokers for the tests: the machine's own on 127.0.0.1:1883 (started when down),
and private ones on free ports with a configuration of the test's choosing."""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

from .ports import free_port

LOCAL_PORT = 1883
LOCAL_URL = f"mqtt://127.0.0.1:{LOCAL_PORT}"


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def ensure_local_broker() -> str:
    """The machine's Mosquitto on 127.0.0.1:1883, started the way the environment documents it
    when it is down; its URL."""
    if _listening(LOCAL_PORT):
        return LOCAL_URL
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    system_config = Path("/etc/mosquitto/mosquitto.conf")
    command = ["mosquitto", "-d", "-c", str(system_config)] if system_config.exists() else []
    if not command:
        command = ["mosquitto", "-d", "-p", str(LOCAL_PORT)]
    subprocess.run(command, check=False, capture_output=True, timeout=30)
    for _ in range(100):
        if _listening(LOCAL_PORT):
            return LOCAL_URL
        time.sleep(0.1)
    raise RuntimeError("mosquitto did not start on 127.0.0.1:1883")


@dataclass
class PrivateBroker:
    """A Mosquitto of the test's own, on ``port``; ``stop`` and ``start`` keep the port."""

    directory: Path
    config: str
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "mosquitto.conf"
        # Run as root, Mosquitto would switch to its own user, which cannot read the test's files.
        stay = "user root\n" if os.geteuid() == 0 else ""
        conf.write_text(f"{stay}listener {self.port} 127.0.0.1\n{self.config}")
        with (self.directory / "mosquitto.log").open("ab") as log:
            self.process = subprocess.Popen(
                ["mosquitto", "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 20
        while not _listening(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("mosquitto did not start: " + self.log())
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def log(self) -> str:
        path = self.directory / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""


@contextmanager
def private_broker(directory: Path, config: str = "allow_anonymous true\n") -> Iterator[PrivateBroker]:
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    broker = PrivateBroker(directory, config)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


class Listener:
    """A subscriber that remembers every message it receives, by topic."""

    def __init__(
        self, port: int, topics: list[str], *, username: str | None = None, password: str | None = None
    ) -> None:
        self.messages: list[tuple[str, bytes, int]] = []
        self.granted: list[int] = []
        self.refused: str | None = None
        self._subscribed = threading.Event()
        self._connected = threading.Event()
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.topics = topics
        self.client.connect_async("127.0.0.1", port)
        self.client.loop_start()

    def _on_connect(
        self, client: mqtt.Client, _data: object, _flags: object, reason: object, _p: object
    ) -> None:
        if getattr(reason, "is_failure", False):
            self.refused = str(reason)
            self._connected.set()
            return
        self._connected.set()
        client.subscribe([(topic, 1) for topic in self.topics])

    def _on_subscribe(
        self, client: mqtt.Client, _data: object, _mid: int, reasons: list[object], _p: object
    ) -> None:
        self.granted = [int(getattr(reason, "value", reason)) for reason in reasons]
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, _data: object, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((message.topic, message.payload, message.qos))

    def wait_subscribed(self, timeout: float = 10) -> None:
        assert self._subscribed.wait(timeout), f"no SUBACK (refused: {self.refused})"

    def wait_connected(self, timeout: float = 10) -> None:
        assert self._connected.wait(timeout), "no CONNACK"

    def wait_for(self, count: int, timeout: float = 10) -> list[tuple[str, bytes, int]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.02)
        with self._lock:
            return list(self.messages)

    def topics_received(self) -> list[str]:
        with self._lock:
            return [topic for topic, _, _ in self.messages]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a broker certificate for 127.0.0.1 signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleetlift test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    paths = directory / "ca.pem", directory / "broker.crt", directory / "broker.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths
