"""The MQTT device channel: a small "check now" message on each released device's own topic.

``{prefix}/{tenant}/devices/{device}/check`` with the payload ``{"check": true}``, QoS 1, not
retained. The message says only "poll now": the device still fetches its instructions over the
authenticated device API, so the broker never sees a secret, and a lost message only delays the
device until its next poll (docs/mqtt.md).

One paho client per server process keeps its connection in paho's network thread, which
reconnects with backoff (1 s doubling to 60 s). ``notify`` never publishes on the event loop: the
fan-out runs on a worker thread that keeps at most ``window`` messages unacknowledged, so opening a
wave of 100,000 devices costs the loop one hand-off and memory stays bounded. While the broker is
unreachable notifications are dropped (the long poll and the poll interval still reach devices)
and the outage is logged once, without the password.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from fleetlift_wire.mqtt import BrokerAddress, usable_level

log = logging.getLogger(__name__)

PAYLOAD = b'{"check":true}'
DEFAULT_WINDOW = 1000  # unacknowledged messages at most (paho's in-flight limit is set to the same)
STALL_TIMEOUT = 30.0  # seconds without an acknowledgement before the rest of a fan-out is dropped
CONNECT_GRACE = 5.0  # right after start, notify waits this long for the first connection


class MqttChannel:
    """Publishes "check now" to each device's topic; see the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        topic_prefix: str = "fleetlift",
        window: int = DEFAULT_WINDOW,
        stall_timeout: float = STALL_TIMEOUT,
        connect_grace: float = CONNECT_GRACE,
        client_id: str | None = None,
        keepalive: int = 30,
    ) -> None:
        self.address = BrokerAddress.parse(url)
        self.topic_prefix = topic_prefix
        self.window = window
        self.stall_timeout = stall_timeout
        # Until then a notify waits for the first connection (a reconciler's first pass may come
        # before the broker answered), instead of dropping the wave as if the broker were down.
        self._grace_until = time.monotonic() + connect_grace
        self.client_id = client_id or f"fleetlift-server-{secrets.token_hex(6)}"
        # The window: messages published and not acknowledged yet, across concurrent fan-outs.
        self._in_flight = 0
        self._refill = max(window // 4, 1)
        self._window_free = threading.Condition(threading.Lock())
        self._connected = threading.Event()
        self._state_lock = threading.Lock()
        self._outage_logged = False
        self._closed = False
        self._skipped_logged = False
        # Fan-outs run here, not in the loop's default executor, so a big one cannot starve it.
        self._workers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="fleetlift-mqtt")
        self._client = self._make_client(keepalive)

    def _make_client(self, keepalive: int) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        if self.address.username is not None:
            client.username_pw_set(self.address.username, self.address.password)
        if self.address.tls:
            client.tls_set(ca_certs=self.address.ca_file, cert_reqs=ssl.CERT_REQUIRED)
        client.max_inflight_messages_set(self.window)
        client.max_queued_messages_set(0)  # the window above bounds what paho holds
        client.reconnect_delay_set(min_delay=1, max_delay=60)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.connect_async(self.address.host, self.address.port, keepalive=keepalive)
        client.loop_start()  # paho's network thread: connects, reconnects, reads acknowledgements
        return client

    # --- paho's callbacks (its network thread) ------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _data: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            self._outage(f"the broker refused the connection: {reason}")
            return
        self._connected.set()
        with self._state_lock:
            recovered, self._outage_logged = self._outage_logged, False
        if recovered:
            log.info("MQTT device channel: connected to %s again", self.address)
        else:
            log.info("MQTT device channel: connected to %s as %s", self.address, self.client_id)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._outage("cannot connect")

    def _on_disconnect(self, client: mqtt.Client, _data: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self._connected.clear()
        if not self._closed:
            self._outage(f"disconnected ({reason})")

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        self._release_slot()

    def _release_slot(self) -> None:
        with self._window_free:
            self._in_flight = max(self._in_flight - 1, 0)
            if self.window - self._in_flight >= self._refill:
                self._window_free.notify()

    def _outage(self, what: str) -> None:
        """Log the first failure of an outage; later ones stay quiet until the broker is back."""
        self._connected.clear()
        self._grace_until = 0.0  # a failed attempt ends the wait for the first connection
        with self._state_lock:
            first, self._outage_logged = not self._outage_logged, True
        if first and not self._closed:
            log.warning(
                "MQTT device channel: %s: %s; devices are reached by their polls until it is back",
                self.address,
                what,
            )

    # --- the port -------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        """Block until connected (for start-up checks, tests and benchmarks)."""
        return self._connected.wait(timeout)

    async def notify(self, tenant_id: str, device_ids: Sequence[str]) -> int:
        """Publish "check now" to each device; how many the broker acknowledged.

        Returns 0 at once while the broker is unreachable. The event loop only hands the IDs to a
        worker thread; a caller that must not wait for the acknowledgements runs this as a task."""
        if not device_ids or self._closed:
            return 0
        while not self._connected.is_set() and time.monotonic() < self._grace_until:
            await asyncio.sleep(0.05)
        if not self._connected.is_set():
            self._outage("not connected")
            return 0
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._workers, self.publish, tenant_id, list(device_ids))

    def publish(self, tenant_id: str, device_ids: Sequence[str]) -> int:
        """The fan-out itself, on the calling thread: publish with at most ``window`` messages
        unacknowledged, then wait for the rest; how many were acknowledged. Stops early (dropping
        the rest) when the broker goes away or acknowledges nothing for ``stall_timeout``."""
        if not usable_level(tenant_id):
            log.warning("MQTT device channel: tenant %r cannot be a topic level; not notified", tenant_id)
            return 0
        usable = [device_id for device_id in device_ids if usable_level(device_id)]
        if len(usable) < len(device_ids) and not self._skipped_logged:
            self._skipped_logged = True
            log.warning(
                "MQTT device channel: %d device IDs cannot be topic levels; not notified",
                len(device_ids) - len(usable),
            )
        deadline = time.monotonic() + self.stall_timeout
        prefix = f"{self.topic_prefix}/{tenant_id}/devices/"
        publish = self._client.publish
        unacknowledged: deque[mqtt.MQTTMessageInfo] = deque()
        acknowledged = 0
        position = 0
        while position < len(usable):
            # Slots are taken in bursts (a quarter of the window at least), so the publishing
            # thread and paho's network thread hand over the interpreter once per burst, not once
            # per message.
            burst = self._reserve(len(usable) - position, deadline)
            if not burst:
                break
            deadline = time.monotonic() + self.stall_timeout  # slots came back: acknowledgements flow
            for device_id in usable[position : position + burst]:
                info = publish(prefix + device_id + "/check", PAYLOAD, qos=1)
                if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:  # not taken (paho ran out of message IDs)
                    self._release_slot()
                    continue
                unacknowledged.append(info)
            position += burst
            while unacknowledged and unacknowledged[0].is_published():  # bookkeeping stays bounded
                unacknowledged.popleft()
                acknowledged += 1
        while unacknowledged and time.monotonic() < deadline and self._connected.is_set():
            if unacknowledged[0].is_published():
                unacknowledged.popleft()
                acknowledged += 1
                deadline = time.monotonic() + self.stall_timeout
            else:
                time.sleep(0.002)
        return acknowledged + sum(1 for info in unacknowledged if info.is_published())

    def _reserve(self, wanted: int, deadline: float) -> int:
        """Take up to ``wanted`` slots of the window, waiting until at least a refill's worth is
        free; 0 when the broker is gone, the channel closed or ``deadline`` passed (nothing was
        acknowledged for ``stall_timeout``)."""
        with self._window_free:
            while True:
                free = self.window - self._in_flight
                if free >= min(wanted, self._refill):
                    taken = min(free, wanted)
                    self._in_flight += taken
                    return taken
                if not self._connected.is_set() or self._closed:
                    return 0
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.warning("MQTT device channel: the broker acknowledges too slowly; dropping the rest")
                    return 0
                self._window_free.wait(min(remaining, 0.5))

    async def close(self) -> None:
        """Disconnect and stop paho's network thread."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._shutdown)

    def _shutdown(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
        self._workers.shutdown(wait=True, cancel_futures=True)
