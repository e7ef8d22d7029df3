"""Azure IoT Hub as the agent's channel (``fleetlift-agent run --iothub-connection-string``), through
Azure's device SDK ``azure-iot-device`` (the ``iothub`` extra).

The device connects to its hub with its own device key (the SDK signs and renews the SAS token;
MQTT over TLS on 8883, or over WebSockets on 443) and then:

- a direct method ``fleetlift.update`` (what ``POST /api/v1/iothub/hubs/{id}/devices/update`` calls)
  is answered 200 at once and wakes the update loop for an immediate poll; other methods get 404;
- a change of the desired property ``fleetlift`` (the server's fallback when the device was offline
  for the method) wakes it too; so does every (re)connection, since a request may have been made
  while the device was away;
- the agent's progress goes into the reported property ``fleetlift`` ({state, deployment_id,
  detail, at}), and its logs and notifications go as device-to-cloud messages (as well as to
  fleetlift over HTTPS).

As with the MQTT check messages, nothing received is trusted: what to install still comes from the
authenticated poll over HTTPS. The hub is a side channel: while it is unreachable the agent polls
at its interval, and what it would have told the hub meanwhile is dropped, never queued without end.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fleetlift_wire.iothub import DeviceConnectionString

log = logging.getLogger("fleetlift_agent")

UPDATE_METHOD = "fleetlift.update"
# What may wait for the hub at once; more is dropped (the same facts reach fleetlift over HTTPS).
MAX_PENDING_SENDS = 64
FIRST_RETRY_SECONDS = 1.0
LAST_RETRY_SECONDS = 60.0


def _sdk() -> Any:
    try:
        import azure.iot.device as sdk
    except ImportError:
        raise RuntimeError(
            "the IoT Hub channel needs Azure's device SDK: pip install 'fleetlift[agent,iothub]'"
        ) from None
    # The SDK creates its paho client with paho's version-1 callbacks, which paho 2 deprecates
    # with a warning at every connection; it is the SDK's to change, not the operator's.
    warnings.filterwarnings(
        "ignore", message="Callback API version 1 is deprecated", category=DeprecationWarning
    )
    return sdk


class IotHubChannel:
    """The device's connection to its hub: wakes the runner on ``fleetlift.update`` and desired
    changes, and reports progress. Implements the runner's ``Wakeup``."""

    def __init__(
        self,
        connection_string: str,
        *,
        ca_file: Path | str | None = None,
        websockets: bool = False,
        keep_alive: int = 60,
        reconnect_seconds: int = 10,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # Checked here so that a mistake is named without echoing the key (the SDK's own parser
        # would accept some of them and fail later, less clearly).
        self.connection = DeviceConnectionString.parse(connection_string)
        options: dict[str, Any] = {
            "websockets": websockets,
            "keep_alive": keep_alive,
            "connection_retry": True,
            "connection_retry_interval": reconnect_seconds,
        }
        if ca_file is not None:
            # A hub behind a gateway (GatewayHostName=) presents a certificate of the gateway's CA.
            options["server_verification_cert"] = Path(ca_file).read_text()
        self._sdk = _sdk()
        self._client: Any = self._sdk.IoTHubDeviceClient.create_from_connection_string(
            connection_string, **options
        )
        self.clock = clock
        self.connected = threading.Event()
        self.methods = 0
        self.desired_patches = 0
        self._wake: Callable[[], None] = lambda: None
        self._stop = threading.Event()
        self._connector: threading.Thread | None = None
        self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fleetlift-iothub-send")
        self._pending = 0
        self._lock = threading.Lock()
        self._outage_logged = False
        self._subscribed = False
        self._client.on_connection_state_change = self._on_connection_state_change

    # --- Wakeup -------------------------------------------------------------------------------

    def watch(self, tenant_id: str, device_id: str, wake: Callable[[], None]) -> None:
        """Connect in the background (once) and call ``wake`` when the hub asks the device to update."""
        with self._lock:
            if self._connector is not None or self._stop.is_set():
                return
            self._wake = wake
            self._connector = threading.Thread(
                target=self._connect_until_done, name="fleetlift-iothub-connect", daemon=True
            )
            self._connector.start()

    def close(self) -> None:
        """Disconnect for good and stop the SDK's threads."""
        self._stop.set()
        self._sender.shutdown(wait=False, cancel_futures=True)
        try:
            self._client.shutdown()
        except Exception as error:  # closing what never connected is not worth a traceback
            log.debug("IoT Hub client shutdown: %s", type(error).__name__)
        connector = self._connector
        if connector is not None:
            connector.join(timeout=30)
        self.connected.clear()

    def _connect_until_done(self) -> None:
        """The SDK reconnects a dropped connection by itself, but not a first connection that
        failed: that is retried here, 1 s doubling to 60 s, until it succeeds or the agent stops."""
        delay = FIRST_RETRY_SECONDS
        while not self._stop.is_set():
            try:
                self._client.connect()
                # Setting a handler subscribes to its topics, so they are set once connected.
                self._client.on_method_request_received = self._on_method_request
                self._client.on_twin_desired_properties_patch_received = self._on_desired_patch
            except Exception as error:
                self._outage(f"cannot connect ({type(error).__name__})")
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, LAST_RETRY_SECONDS)
                continue
            log.info(
                "connected to IoT Hub %s as device %s", self.connection.host_name, self.connection.device_id
            )
            self._subscribed = True
            self._now_connected()
            return

    # --- what the device tells the hub ---------------------------------------------------------

    def report_state(
        self, state: str, *, deployment_id: str | None = None, detail: str | None = None
    ) -> bool:
        """Patch the reported property ``fleetlift``; False when it cannot go now (polling goes on)."""
        patch = {
            "fleetlift": {
                "state": state,
                "deployment_id": deployment_id,
                "detail": (detail or "")[:500] or None,
                "at": int(self.clock()),
            }
        }
        return self._send(lambda: self._client.patch_twin_reported_properties(patch))

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
        message = self._sdk.Message(
            json.dumps(body, separators=(",", ":")), content_encoding="utf-8", content_type="application/json"
        )
        message.custom_properties["kind"] = kind
        return self._send(lambda: self._client.send_message(message))

    def _send(self, call: Callable[[], None]) -> bool:
        """Hand ``call`` to the sending thread: the SDK blocks until the hub acknowledges, and the
        update loop must not wait for a side channel."""
        with self._lock:
            if not self.connected.is_set() or self._stop.is_set() or self._pending >= MAX_PENDING_SENDS:
                return False
            self._pending += 1
        try:
            self._sender.submit(self._run_send, call)
        except RuntimeError:  # closed meanwhile
            with self._lock:
                self._pending -= 1
            return False
        return True

    def _run_send(self, call: Callable[[], None]) -> None:
        try:
            call()
        except Exception as error:
            log.debug("IoT Hub send failed: %s", type(error).__name__)
        finally:
            with self._lock:
                self._pending -= 1

    # --- the SDK's callbacks (its handler threads) ----------------------------------------------

    def _on_connection_state_change(self) -> None:
        if self._client.connected:
            # The first connection counts once its handlers are subscribed (the connecting thread
            # says so); the SDK's reconnections keep the subscriptions.
            if self._subscribed:
                self._now_connected()
        elif not self._stop.is_set():
            self._outage("disconnected; the SDK reconnects")

    def _now_connected(self) -> None:
        with self._lock:
            if self.connected.is_set():
                return
            self.connected.set()
            came_back, self._outage_logged = self._outage_logged, False
        if came_back:
            log.info("IoT Hub %s reachable again", self.connection.host_name)
        # A request sent while the device was offline may be waiting in its desired properties.
        self._wake()

    def _on_method_request(self, request: Any) -> None:
        sdk = self._sdk
        self.methods += 1
        known = request.name == UPDATE_METHOD
        if known:
            answer = sdk.MethodResponse.create_from_method_request(request, 200, {"accepted": True})
        else:
            answer = sdk.MethodResponse.create_from_method_request(
                request, 404, {"error": f"unknown method {request.name}"}
            )
        try:
            self._client.send_method_response(answer)
        except Exception as error:
            log.debug("IoT Hub method response failed: %s", type(error).__name__)
        if known:
            log.info("IoT Hub direct method %s: polling now", request.name)
            self._wake()

    def _on_desired_patch(self, patch: Any) -> None:
        self.desired_patches += 1
        if isinstance(patch, dict) and "fleetlift" in patch:
            log.info("IoT Hub desired property fleetlift changed: polling now")
            self._wake()

    def _outage(self, what: str) -> None:
        """Logged once per outage (never with the key or token); polling goes on meanwhile."""
        with self._lock:
            self.connected.clear()
            first, self._outage_logged = not self._outage_logged, True
        if first:
            log.warning("IoT Hub %s: %s; polling as usual until it is back", self.connection.host_name, what)
