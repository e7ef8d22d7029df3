"""Benchmark: MQTT fan-out when a wave of 100,000 devices opens.

Measures how many "check now" messages per second fleetlift's MQTT device channel publishes
(``await channel.notify(tenant, 100_000 device IDs)``, from the call until the broker acknowledged
every message) beside a bare paho client publishing the same messages (same topics and payload,
QoS 1, the same window of unacknowledged messages) to the same broker. The ratio is the figure
(aim: at least 0.5). A subscriber on ``fleetlift/#`` (mosquitto_sub) counts what the broker
delivered, per round. Rounds alternate bare and fleetlift so both see the same machine.

    python bench/mqtt_fanout.py                          # 100,000 devices, 2 rounds each
    python bench/mqtt_fanout.py --devices 20000 --rounds 1

Uses the broker at --url (default the machine's Mosquitto, 127.0.0.1:1883, started when down).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from fleetlift.channels.mqtt import PAYLOAD, MqttChannel
from machine import machine


@dataclass
class Round:
    kind: str
    tenant: str
    acknowledged: int
    seconds: float
    cpu_seconds: float
    delivered: int = 0

    @property
    def rate(self) -> float:
        return self.acknowledged / self.seconds


def broker_and_client() -> tuple[str, str]:
    """The broker's and paho's versions, for the machine line."""
    usage = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True, check=False).stdout
    broker = usage.splitlines()[0] if usage else "mosquitto (version unknown)"
    return f"paho-mqtt {metadata.version('paho-mqtt')}", broker


def ensure_broker(host: str, port: int) -> None:
    def listening() -> bool:
        with socket.socket() as sock:
            sock.settimeout(1)
            return sock.connect_ex((host, port)) == 0

    if listening():
        return
    if host not in ("127.0.0.1", "localhost") or shutil.which("mosquitto") is None:
        raise SystemExit(f"no broker at {host}:{port}")
    print(f"starting mosquitto on {port}", file=sys.stderr)
    config = Path("/etc/mosquitto/mosquitto.conf")
    command = ["mosquitto", "-d", "-c", str(config)] if config.exists() and port == 1883 else []
    subprocess.run(command or ["mosquitto", "-d", "-p", str(port)], check=False, timeout=30)
    for _ in range(100):
        if listening():
            return
        time.sleep(0.1)
    raise SystemExit("mosquitto did not start")


class Subscriber:
    """mosquitto_sub on ``{prefix}/#``, one line per message, counted per tenant at the end."""

    def __init__(self, host: str, port: int, prefix: str, work: Path) -> None:
        self.path = work / "received.txt"
        self.prefix = prefix
        self.output = self.path.open("wb")
        self.process = subprocess.Popen(
            ["mosquitto_sub", "-h", host, "-p", str(port), "-t", f"{prefix}/#", "-q", "0", "-F", "%t"],
            stdout=self.output,
        )

    def lines(self) -> int:
        self.output.flush()
        with self.path.open("rb") as handle:
            return sum(1 for _ in handle)

    def wait_ready(self, url: str) -> None:
        """Publish probes until one arrives: the subscription is in place."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            asyncio.run(notify_once(url, self.prefix, "probe", ["probe"]))
            time.sleep(0.2)
            if self.lines():
                return
        raise SystemExit("the subscriber never received the probe")

    def settle(self, expected: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        last, still_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            count = self.lines()
            if count >= expected:
                return
            if count != last:
                last, still_since = count, time.monotonic()
            elif time.monotonic() - still_since > 3:
                return  # nothing more is coming
            time.sleep(0.2)

    def per_tenant(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        with self.path.open("rb") as handle:
            for line in handle:
                parts = line.split(b"/")
                if len(parts) > 2:
                    tenant = parts[1].decode()
                    counts[tenant] = counts.get(tenant, 0) + 1
        return counts

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        self.output.close()


async def notify_once(url: str, prefix: str, tenant: str, devices: list[str]) -> int:
    channel = MqttChannel(url, topic_prefix=prefix)
    channel.wait_connected(10)
    try:
        return await channel.notify(tenant, devices)
    finally:
        await channel.close()


def fleetlift_round(url: str, prefix: str, tenant: str, devices: list[str], window: int) -> Round:
    async def run() -> Round:
        channel = MqttChannel(url, topic_prefix=prefix, window=window, stall_timeout=600)
        if not channel.wait_connected(10):
            raise SystemExit("fleetlift's channel did not connect")
        cpu, started = time.process_time(), time.perf_counter()
        acknowledged = await channel.notify(tenant, devices)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
        await channel.close()
        return Round("fleetlift", tenant, acknowledged, seconds, cpu_seconds)

    return asyncio.run(run())


def bare_round(url: str, prefix: str, tenant: str, devices: list[str], window: int) -> Round:
    """A bare paho client, the way its documentation suggests: network loop in its thread,
    publish from this one, at most ``window`` unacknowledged (paho's in-flight limit and a
    semaphore released on each PUBACK; message IDs would run out without one)."""
    parts = urlsplit(url)
    slots = threading.Semaphore(window)
    acknowledged = [0]
    done = threading.Event()
    connected = threading.Event()

    def on_publish(*_: object) -> None:
        slots.release()
        acknowledged[0] += 1
        if acknowledged[0] == len(devices):
            done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bare-{os.getpid()}", protocol=mqtt.MQTTv311)
    if parts.username:
        client.username_pw_set(parts.username, parts.password)
    client.max_inflight_messages_set(window)
    client.on_publish = on_publish
    client.on_connect = lambda *_: connected.set()
    client.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
    client.loop_start()
    if not connected.wait(10):
        raise SystemExit("the bare client did not connect")
    cpu, started = time.process_time(), time.perf_counter()
    for device in devices:
        slots.acquire()
        client.publish(f"{prefix}/{tenant}/devices/{device}/check", PAYLOAD, qos=1)
    done.wait(600)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    client.disconnect()
    client.loop_stop()
    return Round("bare paho", tenant, acknowledged[0], seconds, cpu_seconds)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="mqtt://127.0.0.1:1883")
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--window", type=int, default=1000, help="unacknowledged messages at most")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each, alternating")
    parser.add_argument("--prefix", default="fleetlift")
    args = parser.parse_args()

    parts = urlsplit(args.url)
    ensure_broker(parts.hostname or "127.0.0.1", parts.port or 1883)
    devices = [f"gw-{index:06d}" for index in range(args.devices)]
    run_id = f"{os.getpid()}x{int(time.time()) % 100000}"
    print(machine(*broker_and_client()))
    print(
        f"{args.devices:,} devices, QoS 1, window {args.window}, broker {parts.hostname}:{parts.port or 1883}"
    )
    with tempfile.TemporaryDirectory(prefix="fleetlift-mqtt-bench-") as work:
        subscriber = Subscriber(parts.hostname or "127.0.0.1", parts.port or 1883, args.prefix, Path(work))
        try:
            subscriber.wait_ready(args.url)
            probes = subscriber.lines()
            rounds: list[Round] = []
            for number in range(1, args.rounds + 1):
                for kind in ("bare", "fleetlift"):
                    tenant = f"bench-{run_id}-{kind}-{number}"
                    run = bare_round if kind == "bare" else fleetlift_round
                    result = run(args.url, args.prefix, tenant, devices, args.window)
                    rounds.append(result)
                    print(
                        f"  round {number} {result.kind:9}: {result.acknowledged:,} acknowledged in "
                        f"{result.seconds:.2f} s = {result.rate:,.0f} msg/s, "
                        f"{result.cpu_seconds / result.acknowledged * 1000 * 1000:.0f} ms CPU per 1,000 "
                        "(publishing process)",
                        flush=True,
                    )
            subscriber.settle(probes + args.devices * len(rounds))
            counts = subscriber.per_tenant()
        finally:
            subscriber.close()
    for result in rounds:
        result.delivered = counts.get(result.tenant, 0)
    bare = [r for r in rounds if r.kind == "bare paho"]
    ours = [r for r in rounds if r.kind == "fleetlift"]
    bare_rate = statistics.median(r.rate for r in bare)
    our_rate = statistics.median(r.rate for r in ours)
    print()
    print(f"{'':10} {'msg/s (median)':>15} {'best':>9} {'delivered to the subscriber':>30}")
    for name, group, rate in (("bare paho", bare, bare_rate), ("fleetlift", ours, our_rate)):
        delivered = ", ".join(f"{r.delivered:,}" for r in group)
        print(f"{name:10} {rate:>15,.0f} {max(r.rate for r in group):>9,.0f} {delivered:>30}")
    print(f"ratio fleetlift / bare: {our_rate / bare_rate:.2f} (aim >= 0.5)")
    lost = sum(args.devices - r.delivered for r in rounds)
    print("every message delivered" if lost == 0 else f"{lost:,} messages not seen by the subscriber")


if __name__ == "__main__":
    main()
