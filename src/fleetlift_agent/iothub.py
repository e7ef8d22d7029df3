"""Azure IoT Hub as the agent's channel (``fleetlift-agent run --iothub-connection-string``).

The device connects to its hub with its own device key over the hub's documented MQTT support
(MQTT 3.1.1 over TLS on port 8883, user name ``<hub>/<device>/?api-version=...``, a SAS token as the
password, renewed at every reconnect) and then:

- a direct method ``fleetlift.update`` (what ``POST /api/v1/iothub/hubs/{id}/devices/update`` calls)
  is answered 200 at once and wakes the update loop for an immediate poll;
- a change of the desired property ``fleetlift`` (the server's fallback when the device was offline
  for the method) wakes it too, when the device next connects;
- the agent's progress goes into the reported property ``fleetlift`` ({state, deployment_id,
  detail, at}), and its logs and notifications go as device-to-cloud messages (as well as to
  fleetlift over HTTPS).

As with the MQTT check messages, nothing received is trusted: what to install still comes from the
authenticated poll over HTTPS. Azure's ``azure-iot-device`` SDK is not used: its current release
(2.14) requires paho-mqtt < 2, and the agent's MQTT wake-ups need paho-mqtt 2 (docs/iothub.md); this
module speaks the same documented protocol with paho-mqtt 2.
"""

from __future__ import annotations

import itertools
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from fleetlift_wire.iothub import (
    DESIRED_PATCHES,
    METHOD_CALLS,
    MQTT_PORT,
    TWIN_RESPONSES,
    DeviceConnectionString,
    is_desired_patch,
    method_response_topic,
    parse_method_call,
    reported_patch_topic,
)

log = logging.getLogger("fleetlift_agent")

UPDATE_METHOD = "fleetlift.update"
TOKEN_SECONDS = 3600


class IotHubChannel:
    """The device's connection to its hub: wakes the runner on ``fleetlift.update`` and desired
    changes, and reports progress. Implements the runner's ``Wakeup``."""

    def __init__(
        self,
        connection_string: str,
        *,
        mqtt_host: str | None = None,
        port: int = MQTT_PORT,
        tls: bool = True,
        ca_file: str | None = None,
        keepalive: int = 60,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.connection = DeviceConnectionString.parse(connection_string)
        # The hub's host unless told otherwise (a local broker standing in for the hub in tests).
        self.mqtt_host = mqtt_host or self.connection.host_name
        self.port = port
        self.tls = tls
        self.ca_file = ca_file
        self.keepalive = keepalive
        self.clock = clock
        self.connected = threading.Event()
        self.methods = 0
        self.desired_patches = 0
        self._wake: Callable[[], None] = lambda: None
        self._client: Any = None
        self._request_ids = itertools.count(1)
        self._lock = threading.Lock()
        self._outage_logged = False

    # --- Wakeup -------------------------------------------------------------------------------

    def watch(self, tenant_id: str, device_id: str, wake: Callable[[], None]) -> None:
        """Connect (once) and call ``wake`` when the hub asks the device to update."""
        with self._lock:
            if self._client is not None:
                return
            import paho.mqtt.client as mqtt
            from paho.mqtt.enums import CallbackAPIVersion

            self._wake = wake
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=self.connection.device_id,  # the hub requires the device ID here
                clean_session=False,
                protocol=mqtt.MQTTv311,
            )
            self._credentials(client)
            if self.tls:
                client.tls_set(ca_certs=self.ca_file, cert_reqs=ssl.CERT_REQUIRED)
            client.reconnect_delay_set(min_delay=1, max_delay=60)
            client.on_connect = self._on_connect
            client.on_connect_fail = self._on_connect_fail
            client.on_disconnect = self._on_disconnect
            client.on_message = self._on_message
            client.connect_async(self.mqtt_host, self.port, keepalive=self.keepalive)
            client.loop_start()
            self._client = client
        log.info("connected to IoT Hub %s as device %s", self.connection.host_name, self.connection.device_id)

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        with self._lock:
            client, self._client = self._client, False
        if client:
            client.disconnect()
            client.loop_stop()

    # --- what the device tells the hub ---------------------------------------------------------

    def report_state(
        self, state: str, *, deployment_id: str | None = None, detail: str | None = None
    ) -> bool:
        """Patch the reported property ``fleetlift``; False when not connected (polling goes on)."""
        patch = {
            "fleetlift": {
                "state": state,
                "deployment_id": deployment_id,
                "detail": (detail or "")[:500] or None,
                "at": int(self.clock()),
            }
        }
        return self._publish(reported_patch_topic(next(self._request_ids)), patch)

    def observe(self, kind: str, fields: dict[str, Any]) -> None:
        """For ``DeviceClient.observers``: a report the server took goes to the twin's reported
        properties; logs and notifications go as device-to-cloud messages."""
        if kind == "report":
            self.report_state(
                fields["status"], deployment_id=fields["deployment_id"], detail=fields["detail"]
            )
        elif kind in ("log", "notification"):
            self.send_event(kind, fields)

    def send_event(self, kind: str, body: dict[str, Any]) -> bool:
        """A device-to-cloud message (logs, notifications) with its kind as an application property."""
        topic = f"{self.connection.events_topic}kind={kind}&$.ct=application%2Fjson&$.ce=utf-8"
        return self._publish(topic, body)

    def _publish(self, topic: str, body: dict[str, Any]) -> bool:
        client = self._client
        if not client or not self.connected.is_set():
            return False
        client.publish(topic, json.dumps(body, separators=(",", ":")), qos=1)
        return True

    # --- paho's callbacks (its network thread) ----------------------------------------------------

    def _credentials(self, client: Any) -> None:
        expiry = int(self.clock()) + TOKEN_SECONDS
        client.username_pw_set(self.connection.mqtt_username, self.connection.password(expiry))

    def _on_connect(self, client: Any, _data: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            self._outage(f"the hub refused the connection: {reason}")
            return
        if self._outage_logged:
            log.info("IoT Hub %s reachable again", self.connection.host_name)
        self._outage_logged = False
        client.subscribe([(METHOD_CALLS, 0), (DESIRED_PATCHES, 0), (TWIN_RESPONSES, 0)])
        self.connected.set()
        # A request sent while the device was offline may be waiting in its desired properties.
        self._wake()

    def _on_connect_fail(self, client: Any, _data: Any) -> None:
        self._credentials(client)  # a fresh token for the next attempt
        self._outage("cannot connect")

    def _on_disconnect(self, client: Any, _data: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self.connected.clear()
        if self._client:  # not our own close()
            self._credentials(client)
            self._outage(f"disconnected ({reason})")

    def _on_message(self, client: Any, _data: Any, message: Any) -> None:
        call = parse_method_call(message.topic)
        if call is not None:
            name, request_id = call
            self.methods += 1
            if name == UPDATE_METHOD:
                log.info("IoT Hub direct method %s: polling now", name)
                client.publish(method_response_topic(200, request_id), json.dumps({"accepted": True}), qos=0)
                self._wake()
            else:
                body = json.dumps({"error": f"unknown method {name}"})
                client.publish(method_response_topic(404, request_id), body, qos=0)
            return
        if is_desired_patch(message.topic):
            self.desired_patches += 1
            try:
                patch = json.loads(message.payload or b"{}")
            except ValueError:
                return
            if isinstance(patch, dict) and "fleetlift" in patch:
                log.info("IoT Hub desired property fleetlift changed: polling now")
                self._wake()

    def _outage(self, what: str) -> None:
        """Logged once per outage (never with the token); polling goes on meanwhile."""
        self.connected.clear()
        if not self._outage_logged:
            self._outage_logged = True
            log.warning("IoT Hub %s: %s; polling as usual until it is back", self.connection.host_name, what)
