"""Azure IoT Hub facts shared by the server's adapter and the agent's IoT Hub channel: shared access
signatures, device connection strings, and the device-side MQTT topics of the hub's documented
MQTT support (api-version 2021-04-12). Pure: no I/O, no clock."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import urllib.parse
from dataclasses import dataclass, field

API_VERSION = "2021-04-12"
MQTT_PORT = 8883  # the hub accepts MQTT 3.1.1 over TLS only

# Topics of one device's connection (the hub scopes them to the connection, so no device ID appears
# in the method and twin topics).
DESIRED_PATCHES = "$iothub/twin/PATCH/properties/desired/#"
METHOD_CALLS = "$iothub/methods/POST/#"
TWIN_RESPONSES = "$iothub/twin/res/#"
_METHOD_PREFIX = "$iothub/methods/POST/"


def _encode(text: str) -> str:
    # The documented form: the lower-case URL encoding of the lower-case resource URI.
    return urllib.parse.quote(text.lower(), safe="").lower()


def sas_token(resource_uri: str, key_b64: str, expiry: int, key_name: str | None = None) -> str:
    """A ``SharedAccessSignature`` for ``resource_uri`` valid until ``expiry`` (Unix seconds):
    HMAC-SHA256, keyed with the base64-decoded key, over the URL-encoded resource URI, a newline
    and the expiry; ``skn`` names the shared access policy (none for a device's own key)."""
    encoded_uri = _encode(resource_uri)
    to_sign = f"{encoded_uri}\n{expiry}".encode()
    digest = hmac.new(base64.b64decode(key_b64), to_sign, hashlib.sha256).digest()
    signature = urllib.parse.quote(base64.b64encode(digest).decode("ascii"), safe="")
    token = f"SharedAccessSignature sr={encoded_uri}&sig={signature}&se={expiry}"
    if key_name:
        token += f"&skn={urllib.parse.quote(key_name, safe='')}"
    return token


@dataclass(frozen=True)
class DeviceConnectionString:
    """``HostName=<hub>.azure-devices.net;DeviceId=<id>;SharedAccessKey=<base64>``."""

    host_name: str
    device_id: str
    key: str = field(repr=False)

    @classmethod
    def parse(cls, text: str) -> DeviceConnectionString:
        """Parse a device connection string; ``ValueError`` names what is wrong, never the key."""
        parts: dict[str, str] = {}
        for item in text.strip().split(";"):
            if not item:
                continue
            name, separator, value = item.partition("=")
            if not separator or not value:
                raise ValueError("a device connection string is Name=value pairs separated by ';'")
            if name in parts:
                raise ValueError(f"'{name}' appears twice in the connection string")
            parts[name] = value
        missing = [name for name in ("HostName", "DeviceId", "SharedAccessKey") if name not in parts]
        if missing:
            raise ValueError(f"the device connection string lacks {', '.join(missing)}")
        unknown = sorted(set(parts) - {"HostName", "DeviceId", "SharedAccessKey"})
        if unknown:
            raise ValueError(f"unsupported parts in the device connection string: {', '.join(unknown)}")
        try:
            base64.b64decode(parts["SharedAccessKey"], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("SharedAccessKey is not base64") from None
        return cls(parts["HostName"], parts["DeviceId"], parts["SharedAccessKey"])

    @property
    def resource_uri(self) -> str:
        return f"{self.host_name}/devices/{self.device_id}"

    @property
    def mqtt_username(self) -> str:
        return f"{self.host_name}/{self.device_id}/?api-version={API_VERSION}"

    def password(self, expiry: int) -> str:
        """The MQTT password: a SAS token signed with the device's own key."""
        return sas_token(self.resource_uri, self.key, expiry)

    @property
    def events_topic(self) -> str:
        """Device-to-cloud messages."""
        return f"devices/{self.device_id}/messages/events/"


def reported_patch_topic(request_id: int) -> str:
    """Where a device publishes a patch of its reported properties."""
    return f"$iothub/twin/PATCH/properties/reported/?$rid={request_id}"


def method_response_topic(status: int, request_id: str) -> str:
    """Where a device answers a direct method."""
    return f"$iothub/methods/res/{status}/?$rid={request_id}"


def parse_method_call(topic: str) -> tuple[str, str] | None:
    """(method name, request ID) of a direct-method topic; ``None`` for any other topic."""
    if not topic.startswith(_METHOD_PREFIX):
        return None
    name, _, query = topic[len(_METHOD_PREFIX) :].partition("/?")
    request_id = urllib.parse.parse_qs(query).get("$rid", [""])[0]
    if not name or not request_id:
        return None
    return name, request_id


def is_desired_patch(topic: str) -> bool:
    """Whether ``topic`` carries a change of the device twin's desired properties."""
    return topic.startswith("$iothub/twin/PATCH/properties/desired/")
