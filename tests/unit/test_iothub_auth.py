"""IoT Hub credentials: SAS tokens against a worked example, renewal, connection strings, Entra ID."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import sys
import urllib.parse
from dataclasses import dataclass

import pytest
from azure.core.exceptions import ClientAuthenticationError

from fleetlift.adapters.iothub import (
    ENTRA_SCOPE,
    ConnectionString,
    EntraTokenProvider,
    IotHubBadGateway,
    Renewable,
    SasTokenProvider,
    sas_token,
)
from fleetlift.errors import InvalidInput

# The worked example. The key is base64 of the 32 bytes b"fleetlift-worked-example-key-32!"; the two
# signatures were computed outside Python, with OpenSSL:
#   printf 'myhub.azure-devices.net\n1700000000' | openssl dgst -sha256 -mac HMAC \
#       -macopt hexkey:$(printf %s 'fleetlift-worked-example-key-32!' | xxd -p | tr -d '\n') -binary | base64
KEY = "ZmxlZXRsaWZ0LXdvcmtlZC1leGFtcGxlLWtleS0zMiE="
EXPIRY = 1700000000
HUB_SIGNATURE = "Q86R9epHpmFk7nxJntD2kN9HOpMAw/ezQ2xPyUJRrwE="  # over "myhub.azure-devices.net\n1700000000"
DEVICE_SIGNATURE = (
    "mPTu78vvQWuuwOE9dQP0/YlnWJvzY580R2RsQooUq0E="  # "myhub...net%2fdevices%2fgw-1\n1700000000"
)
CONNECTION = f"HostName=myhub.azure-devices.net;SharedAccessKeyName=iothubowner;SharedAccessKey={KEY}"


def _by_hand(encoded_uri: str, expiry: int) -> str:
    """The documented algorithm, written out again with the standard library alone."""
    mac = hmac.new(base64.b64decode(KEY), (encoded_uri + "\n" + str(expiry)).encode("utf-8"), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode("ascii")


def _fields(token: str) -> dict[str, str]:
    scheme, _, rest = token.partition(" ")
    assert scheme == "SharedAccessSignature"
    return {
        name: urllib.parse.unquote(value) for name, _, value in (p.partition("=") for p in rest.split("&"))
    }


def test_hub_token_matches_the_worked_example() -> None:
    token = sas_token("myhub.azure-devices.net", KEY, "iothubowner", EXPIRY)
    assert _by_hand("myhub.azure-devices.net", EXPIRY) == HUB_SIGNATURE
    assert token == (
        "SharedAccessSignature sr=myhub.azure-devices.net"
        "&sig=Q86R9epHpmFk7nxJntD2kN9HOpMAw%2FezQ2xPyUJRrwE%3D&se=1700000000&skn=iothubowner"
    )
    assert _fields(token) == {
        "sr": "myhub.azure-devices.net",
        "sig": HUB_SIGNATURE,
        "se": "1700000000",
        "skn": "iothubowner",
    }


def test_resource_uri_is_lower_cased_and_url_encoded_before_signing() -> None:
    # "Lower case URL-encoding of the lower case resource URI" is what gets signed and sent as sr.
    token = sas_token("MyHub.azure-devices.net/devices/GW-1", KEY, None, EXPIRY)
    assert _by_hand("myhub.azure-devices.net%2fdevices%2fgw-1", EXPIRY) == DEVICE_SIGNATURE
    assert token.startswith("SharedAccessSignature sr=myhub.azure-devices.net%2fdevices%2fgw-1&sig=")
    assert _fields(token)["sig"] == DEVICE_SIGNATURE
    assert "skn" not in _fields(token)  # device-registry credentials carry no policy name


def test_connection_string_parses_and_keeps_the_key_out_of_sight() -> None:
    parsed = ConnectionString.parse(" " + CONNECTION.replace("HostName", "hostname") + "; ")
    assert (parsed.host_name, parsed.key_name, parsed.key) == ("myhub.azure-devices.net", "iothubowner", KEY)
    assert KEY not in repr(parsed)
    assert KEY not in str(parsed)
    assert "SharedAccessKey=[redacted]" in str(parsed)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "missing HostName, SharedAccessKeyName, SharedAccessKey"),
        (f"HostName=myhub.azure-devices.net;SharedAccessKey={KEY}", "missing SharedAccessKeyName"),
        ("HostName=myhub.azure-devices.net;SharedAccessKeyName=iothubowner", "missing SharedAccessKey"),
        (f"HostName=h;SharedAccessKeyName=x;SharedAccessKey={KEY};HostName=h", "HostName is given twice"),
        (f"{CONNECTION};DeviceId=gw-1", "device or module connection string"),
        (f"{CONNECTION};Bogus=1", "unknown part 'Bogus'"),
        ("HostName=h;SharedAccessKeyName=x;iothubowner", "part 3 is not Name=value"),
        (f"HostName=h;SharedAccessKeyName=x;{KEY}", "unknown part 3"),  # a bare key, never echoed
        (
            "HostName=h;SharedAccessKeyName=x;SharedAccessKey=not base64!!",
            "SharedAccessKey is not valid base64",
        ),
        (f"HostName=https://h/x;SharedAccessKeyName=x;SharedAccessKey={KEY}", "HostName must be a bare host"),
        (
            "HostName=h;SharedAccessSignature=SharedAccessSignature sr=h&sig=abc&se=1",
            "fixed SharedAccessSignature cannot be renewed",
        ),
    ],
)
def test_connection_string_errors_are_clear_and_never_echo_the_key(text: str, complaint: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        ConnectionString.parse(text)
    assert complaint in caught.value.detail
    for secret in (KEY[:12], "not base64!!", "sig=abc"):
        assert secret not in str(caught.value)
        assert secret not in repr(caught.value)
        assert secret not in str(caught.value.extra)


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_sas_provider_renews_before_expiry() -> None:
    clock = FakeClock(EXPIRY - 3600)
    provider = SasTokenProvider.from_connection_string(
        CONNECTION, ttl_seconds=3600, renew_before_seconds=300, clock=clock
    )
    first = asyncio.run(provider.authorization())
    assert first == sas_token("myhub.azure-devices.net", KEY, "iothubowner", EXPIRY)
    assert provider.expiry == EXPIRY

    clock.now = EXPIRY - 301  # still more than the margin left: the same token
    assert asyncio.run(provider.authorization()) == first

    clock.now = EXPIRY - 300  # within the margin: a new one, valid for another hour from now
    renewed = asyncio.run(provider.authorization())
    assert renewed != first
    assert _fields(renewed)["se"] == str(EXPIRY - 300 + 3600)

    provider.invalidate()
    clock.now += 1
    assert _fields(asyncio.run(provider.authorization()))["se"] == str(EXPIRY - 299 + 3600)
    assert isinstance(provider, Renewable)


def test_sas_provider_repr_hides_key_and_token() -> None:
    provider = SasTokenProvider.from_connection_string(CONNECTION, clock=FakeClock(EXPIRY))
    token = asyncio.run(provider.authorization())
    text = repr(provider)
    assert "myhub.azure-devices.net" in text
    assert KEY not in text
    assert _fields(token)["sig"] not in text


def test_sas_provider_refuses_a_margin_longer_than_the_lifetime() -> None:
    with pytest.raises(InvalidInput):
        SasTokenProvider.from_connection_string(CONNECTION, ttl_seconds=60, renew_before_seconds=60)


@dataclass
class AccessToken:
    token: str
    expires_on: int


class FakeCredential:
    def __init__(self, clock: FakeClock, *, fail: bool = False) -> None:
        self.clock = clock
        self.fail = fail
        self.scopes: list[tuple[str, ...]] = []
        self.closed = False

    async def get_token(self, *scopes: str) -> AccessToken:
        self.scopes.append(scopes)
        await asyncio.sleep(0)  # let concurrent callers pile up behind the lock
        if self.fail:
            raise ClientAuthenticationError(message="secret-detail: client secret abc123 was rejected")
        return AccessToken(f"entra-token-{len(self.scopes)}", int(self.clock.now) + 3600)

    async def close(self) -> None:
        self.closed = True


def test_entra_provider_gets_bearer_tokens_for_the_hub_scope_and_renews_them() -> None:
    clock = FakeClock(1000)
    credential = FakeCredential(clock)
    provider = EntraTokenProvider(credential, renew_before_seconds=300, clock=clock)

    async def scenario() -> list[str]:
        return list(await asyncio.gather(*(provider.authorization() for _ in range(5))))

    assert asyncio.run(scenario()) == ["Bearer entra-token-1"] * 5
    assert credential.scopes == [(ENTRA_SCOPE,)]  # one fetch for five concurrent requests
    assert ENTRA_SCOPE == "https://iothubs.azure.net/.default"

    clock.now = 1000 + 3600 - 301
    assert asyncio.run(provider.authorization()) == "Bearer entra-token-1"
    clock.now = 1000 + 3600 - 300
    assert asyncio.run(provider.authorization()) == "Bearer entra-token-2"
    provider.invalidate()
    assert asyncio.run(provider.authorization()) == "Bearer entra-token-3"
    assert "entra-token" not in repr(provider)
    asyncio.run(provider.close())
    assert credential.closed


def test_entra_failures_become_bad_gateway_without_the_credential_message() -> None:
    provider = EntraTokenProvider(FakeCredential(FakeClock(0), fail=True))
    with pytest.raises(IotHubBadGateway) as caught:
        asyncio.run(provider.authorization())
    assert "ClientAuthenticationError" in caught.value.detail
    assert "abc123" not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_entra_without_azure_identity_says_which_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "azure.identity.aio", None)  # makes the import fail
    with pytest.raises(InvalidInput, match=r"fleetlift\[azure\]"):
        EntraTokenProvider()
