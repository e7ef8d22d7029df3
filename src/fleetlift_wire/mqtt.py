"""The MQTT "check now" channel as both ends see it: the broker address and the device's topic."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

_FORBIDDEN_IN_LEVEL = frozenset("/+#\0")


@dataclass(frozen=True)
class BrokerAddress:
    """Where the broker is and how to log in, parsed from
    ``mqtt[s]://user:password@host:port[?ca=/path/ca.pem]`` (``ca``: a private CA)."""

    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None
    ca_file: str | None

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError("an MQTT broker URL starts with mqtt:// or mqtts://")
        if not parts.hostname:
            raise ValueError("the MQTT broker URL names no host")
        tls = parts.scheme == "mqtts"
        query = parse_qs(parts.query)
        return cls(
            host=parts.hostname,
            port=parts.port or (8883 if tls else 1883),
            tls=tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            ca_file=query["ca"][0] if "ca" in query else None,
        )

    def __str__(self) -> str:
        """The address as logs may show it: the user name, never the password."""
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"


def check_topic(prefix: str, tenant_id: str, device_id: str) -> str:
    """The topic a device subscribes to and the server publishes "check now" on."""
    return f"{prefix}/{tenant_id}/devices/{device_id}/check"


def usable_level(value: str) -> bool:
    """Whether a tenant or device ID can be one topic level (no ``/``, ``+``, ``#``)."""
    return bool(value) and not (_FORBIDDEN_IN_LEVEL & set(value))
