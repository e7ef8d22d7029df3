"""Optional "check now" messages from the server over MQTT (``fleetlift-agent run --mqtt-url``).

The agent subscribes to its own topic, ``{prefix}/{tenant}/devices/{device_id}/check``; any
message there only wakes the update loop for an immediate poll. What to install still comes from
the authenticated poll over HTTPS, so nothing in the message is trusted and a forged one costs one
poll. The broker being down changes nothing else: the agent polls at its interval as always, and
paho's network thread reconnects in the background (1 s doubling to 60 s).

paho-mqtt is imported only when MQTT is configured (the ``agent`` extra installs it).
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable
from typing import Any

from fleetlift_wire.mqtt import BrokerAddress, check_topic, usable_level

log = logging.getLogger("fleetlift_agent")


class CheckSubscriber:
    """Calls ``wake`` whenever a message arrives on the device's check topic.

    The device ID is known after the first authentication: ``watch`` is called then; the first
    call connects, later ones change nothing (a device's ID never changes)."""

    def __init__(self, url: str, *, topic_prefix: str = "fleetlift", keepalive: int = 60) -> None:
        self.address = BrokerAddress.parse(url)
        self.topic_prefix = topic_prefix
        self.keepalive = keepalive
        self.topic: str | None = None
        self.messages = 0
        self.subscribed = threading.Event()
        self._wake: Callable[[], None] = lambda: None
        self._client: Any = None
        self._outage_logged = False
        self._ever_subscribed = False
        self._lock = threading.Lock()

    def watch(self, tenant_id: str, device_id: str, wake: Callable[[], None]) -> None:
        """Subscribe to this device's topic (once) and call ``wake`` for every message."""
        with self._lock:
            if self._client is not None:
                return
            if not (usable_level(tenant_id) and usable_level(device_id)):
                log.warning("device %r of tenant %r cannot name an MQTT topic", device_id, tenant_id)
                self._client = False
                return
            import paho.mqtt.client as mqtt
            from paho.mqtt.enums import CallbackAPIVersion

            self.topic = check_topic(self.topic_prefix, tenant_id, device_id)
            self._wake = wake
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=f"fleetlift-agent-{device_id}",
                clean_session=True,
                protocol=mqtt.MQTTv311,
            )
            if self.address.username is not None:
                client.username_pw_set(self.address.username, self.address.password)
            if self.address.tls:
                client.tls_set(ca_certs=self.address.ca_file, cert_reqs=ssl.CERT_REQUIRED)
            client.reconnect_delay_set(min_delay=1, max_delay=60)
            client.on_connect = self._on_connect
            client.on_connect_fail = self._on_connect_fail
            client.on_disconnect = self._on_disconnect
            client.on_subscribe = self._on_subscribe
            client.on_message = self._on_message
            client.connect_async(self.address.host, self.address.port, keepalive=self.keepalive)
            client.loop_start()
            self._client = client
        log.info("listening for check messages on %s at %s", self.topic, self.address)

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        with self._lock:
            client, self._client = self._client, False
        if client:
            client.disconnect()
            client.loop_stop()

    # --- paho's callbacks (its network thread) --------------------------------------------

    def _on_connect(self, client: Any, _data: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            self._outage(f"the broker refused the connection: {reason}")
            return
        if self._outage_logged:
            log.info("MQTT broker %s reachable again", self.address)
        self._outage_logged = False
        # A clean session each time: subscribe again after every (re)connect.
        client.subscribe(self.topic, qos=1)

    def _on_subscribe(self, client: Any, _data: Any, _mid: int, reasons: Any, _props: Any) -> None:
        if any(reason.is_failure for reason in reasons):
            log.warning("the MQTT broker refused the subscription to %s (check its ACL)", self.topic)
            return
        log.info("subscribed to %s", self.topic)
        first, self._ever_subscribed = not self._ever_subscribed, True
        self.subscribed.set()
        if first:
            # A message published between the agent's first poll and now was missed: poll once.
            self._wake()

    def _on_connect_fail(self, client: Any, _data: Any) -> None:
        self._outage("cannot connect")

    def _on_disconnect(self, client: Any, _data: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self.subscribed.clear()
        if self._client:  # not our own close()
            self._outage(f"disconnected ({reason})")

    def _on_message(self, client: Any, _data: Any, message: Any) -> None:
        self.messages += 1
        log.info("check message from the server: polling now")
        self._wake()

    def _outage(self, what: str) -> None:
        """Logged once per outage; polling goes on meanwhile."""
        self.subscribed.clear()
        if not self._outage_logged:
            self._outage_logged = True
            log.warning("MQTT broker %s: %s; polling as usual until it is back", self.address, what)
