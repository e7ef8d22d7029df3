"""Credentials for IoT Hub's service REST API: shared access signatures from a connection string, or
Entra ID tokens through azure-identity (the optional ``azure`` extra).

Both providers answer :meth:`AuthProvider.authorization` with a ready ``Authorization`` header value,
renewed some minutes before it expires. Neither ever puts a key or a token in a log, a repr or an error.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from azure.core.exceptions import AzureError

from fleetlift.adapters.iothub.errors import IotHubBadGateway
from fleetlift.errors import InvalidInput
from fleetlift_wire.iothub import sas_token as wire_sas_token

ENTRA_SCOPE = "https://iothubs.azure.net/.default"

Clock = Callable[[], float]


class AuthProvider(Protocol):
    """What the client needs from a credential: the ``Authorization`` header for the next request."""

    async def authorization(self) -> str:
        """The current ``Authorization`` header value, renewed when it is about to expire."""
        ...


@runtime_checkable
class Renewable(Protocol):
    """A provider that can drop its cached token, so a 401 is retried once with a fresh one."""

    def invalidate(self) -> None:
        """Forget the cached token; the next :meth:`authorization` makes a new one."""
        ...


_REQUIRED = ("HostName", "SharedAccessKeyName", "SharedAccessKey")
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::[0-9]{1,5})?")
_WORD = re.compile(r"[A-Za-z]{1,32}")
_KNOWN = {name.lower(): name for name in (*_REQUIRED, "DeviceId", "ModuleId", "SharedAccessSignature")}


@dataclass(frozen=True)
class ConnectionString:
    """A hub-level connection string: ``HostName=...;SharedAccessKeyName=...;SharedAccessKey=...``."""

    host_name: str
    key_name: str
    key: str = field(repr=False)  # base64, as the portal shows it; never printed

    @classmethod
    def parse(cls, text: str) -> ConnectionString:
        """Parse and check a connection string; errors name the problem but never echo a value."""
        values: dict[str, str] = {}
        for position, segment in enumerate(part for part in text.strip().split(";") if part.strip()):
            name, sep, value = segment.partition("=")  # keys end in "=" padding: split at the first only
            canonical = _KNOWN.get(name.strip().lower())
            if not sep:
                raise InvalidInput(f"IoT Hub connection string: part {position + 1} is not Name=value")
            if canonical is None:
                # Name a short, word-like part; anything else may be a key pasted in the wrong place.
                shown = f" {name.strip()!r}" if _WORD.fullmatch(name.strip()) else f" {position + 1}"
                raise InvalidInput(f"IoT Hub connection string: unknown part{shown}")
            if canonical in values:
                raise InvalidInput(f"IoT Hub connection string: {canonical} is given twice")
            values[canonical] = value.strip()
        if "DeviceId" in values or "ModuleId" in values:
            raise InvalidInput(
                "IoT Hub connection string: this is a device or module connection string; fleetlift needs "
                "a hub-level shared access policy (such as iothubowner, or registryReadWrite + service)"
            )
        if "SharedAccessSignature" in values:
            raise InvalidInput(
                "IoT Hub connection string: a fixed SharedAccessSignature cannot be renewed; "
                "give the policy's SharedAccessKeyName and SharedAccessKey"
            )
        missing = [name for name in _REQUIRED if not values.get(name)]
        if missing:
            raise InvalidInput(f"IoT Hub connection string: missing {', '.join(missing)}")
        host = values["HostName"]
        if not _HOST.fullmatch(host):
            raise InvalidInput(
                "IoT Hub connection string: HostName must be a bare host name such as myhub.azure-devices.net"
            )
        try:
            decoded = base64.b64decode(values["SharedAccessKey"], validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput("IoT Hub connection string: SharedAccessKey is not valid base64") from None
        if not decoded:
            raise InvalidInput("IoT Hub connection string: SharedAccessKey is empty")
        return cls(host_name=host, key_name=values["SharedAccessKeyName"], key=values["SharedAccessKey"])

    def __str__(self) -> str:
        return f"HostName={self.host_name};SharedAccessKeyName={self.key_name};SharedAccessKey=[redacted]"


def sas_token(resource_uri: str, key_b64: str, key_name: str | None, expiry: int) -> str:
    """A ``SharedAccessSignature`` header value for ``resource_uri`` valid until ``expiry`` (Unix seconds).

    The signature is HMAC-SHA256, keyed with the base64-decoded key, over the URL-encoded resource URI,
    a newline and the expiry (computed in ``fleetlift_wire.iothub``).
    """
    return wire_sas_token(resource_uri, key_b64, expiry, key_name)


class SasTokenProvider:
    """Shared access signatures for the whole hub, signed with a policy key and renewed before expiry."""

    def __init__(
        self,
        connection: ConnectionString,
        *,
        ttl_seconds: int = 3600,
        renew_before_seconds: int = 300,
        clock: Clock = time.time,
    ) -> None:
        if renew_before_seconds >= ttl_seconds:
            raise InvalidInput("SAS renewal margin must be shorter than the token's lifetime")
        self.host_name = connection.host_name
        self._connection = connection
        self._ttl = ttl_seconds
        self._margin = renew_before_seconds
        self._clock = clock
        self._token: str | None = None
        self._expiry = 0

    @classmethod
    def from_connection_string(cls, text: str, **options: Any) -> SasTokenProvider:
        """A provider for the hub that ``text`` names."""
        return cls(ConnectionString.parse(text), **options)

    @property
    def expiry(self) -> int:
        """Unix time at which the current token expires (0 before the first one)."""
        return self._expiry

    async def authorization(self) -> str:
        """The current token, or a new one when the current one expires within the renewal margin."""
        now = self._clock()
        if self._token is None or now >= self._expiry - self._margin:
            self._expiry = int(now) + self._ttl
            # Service tokens are scoped to the hub itself, not to a path inside it.
            self._token = sas_token(
                self._connection.host_name, self._connection.key, self._connection.key_name, self._expiry
            )
        return self._token

    def invalidate(self) -> None:
        """Forget the current token."""
        self._token = None

    def __repr__(self) -> str:
        return f"SasTokenProvider(host_name={self.host_name!r}, key_name={self._connection.key_name!r})"


class _AccessToken(Protocol):
    @property
    def token(self) -> str: ...

    @property
    def expires_on(self) -> int: ...


class AsyncTokenCredential(Protocol):
    """The part of azure-identity's async credentials we use (``DefaultAzureCredential`` and friends)."""

    def get_token(self, *scopes: str) -> Awaitable[_AccessToken]:
        """A token for ``scopes``."""
        ...

    async def close(self) -> None:
        """Release the credential's transport."""
        ...


def _default_credential() -> AsyncTokenCredential:
    try:
        # Imported here: azure-identity is the optional "azure" extra, needed only for Entra ID.
        from azure.identity.aio import DefaultAzureCredential
    except ImportError:
        raise InvalidInput(
            "Entra ID authentication to IoT Hub needs azure-identity: install fleetlift[azure]"
        ) from None
    credential: AsyncTokenCredential = DefaultAzureCredential()
    return credential


class EntraTokenProvider:
    """Bearer tokens from Entra ID for ``https://iothubs.azure.net/.default``, renewed before they expire."""

    def __init__(
        self,
        credential: AsyncTokenCredential | None = None,
        *,
        renew_before_seconds: int = 300,
        clock: Clock = time.time,
    ) -> None:
        self._credential = credential if credential is not None else _default_credential()
        self._margin = renew_before_seconds
        self._clock = clock
        self._token: str | None = None
        self._expires_on = 0
        self._lock = asyncio.Lock()  # many requests at once must not all ask Entra ID for a token

    async def authorization(self) -> str:
        """``Bearer <token>``, fetched again when the token expires within the renewal margin."""
        async with self._lock:
            if self._token is None or self._clock() >= self._expires_on - self._margin:
                try:
                    access = await self._credential.get_token(ENTRA_SCOPE)
                except AzureError as error:
                    # azure-identity's messages can be long and name local credential sources; keep the kind.
                    raise IotHubBadGateway(
                        f"Entra ID gave no token for IoT Hub ({type(error).__name__}); check the identity "
                        "and its role assignment (IoT Hub Data Contributor)",
                        hub_code=None,
                        hub_status=None,
                    ) from None
                self._token = access.token
                self._expires_on = int(access.expires_on)
            return f"Bearer {self._token}"

    def invalidate(self) -> None:
        """Forget the current token."""
        self._token = None

    async def close(self) -> None:
        """Close the underlying credential."""
        await self._credential.close()

    def __repr__(self) -> str:
        return f"EntraTokenProvider(scope={ENTRA_SCOPE!r})"
