"""Azure IoT Hub facts that need no SDK: shared access signatures (the server's adapter signs its
requests with them) and device connection strings (the agent checks one before handing it to Azure's
device SDK). Pure: no I/O, no clock."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import urllib.parse
from dataclasses import dataclass, field


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
    """``HostName=<hub>.azure-devices.net;DeviceId=<id>;SharedAccessKey=<base64>``, with
    ``GatewayHostName=<host>`` when the device reaches its hub through an IoT Edge gateway."""

    host_name: str
    device_id: str
    key: str = field(repr=False)
    gateway_host_name: str | None = None

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
        unknown = sorted(set(parts) - {"HostName", "DeviceId", "SharedAccessKey", "GatewayHostName"})
        if unknown:
            raise ValueError(f"unsupported parts in the device connection string: {', '.join(unknown)}")
        try:
            base64.b64decode(parts["SharedAccessKey"], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("SharedAccessKey is not base64") from None
        return cls(
            parts["HostName"], parts["DeviceId"], parts["SharedAccessKey"], parts.get("GatewayHostName")
        )
