"""Token verification against a real OpenID Connect provider on loopback: discovery, JWKS,
Entra-style claims, key rotation, and the attacks a verifier must refuse."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from fleetlift.auth import IssuerConfig, Role, TokenVerifier
from fleetlift.errors import BackendUnavailable, Unauthenticated

AUDIENCE = "api://fleetlift"
ENTRA_TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"


@dataclass
class Provider:
    """A minimal OIDC provider: discovery and JWKS over HTTP, RSA keys like Entra ID's."""

    url: str = ""
    keys: dict[str, rsa.RSAPrivateKey] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    down: bool = False

    def add_key(self) -> str:
        kid = uuid.uuid4().hex[:16]
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return kid

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid, key in self.keys.items():
            jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return {"keys": keys}

    def token(self, kid: str, *, issuer: str | None = None, **claims: Any) -> str:
        now = datetime.now(UTC)
        body = {
            "iss": issuer or self.url,
            "aud": AUDIENCE,
            "sub": "7d9c2a5e-user",
            "tid": ENTRA_TENANT,
            "roles": ["Fleet.Operator"],
            "iat": int(now.timestamp()),
            "nbf": int(now.timestamp()),
            "exp": int((now + timedelta(minutes=10)).timestamp()),
        }
        body.update(claims)
        return jwt.encode(body, self.keys[kid], algorithm="RS256", headers={"kid": kid})


@pytest.fixture
def provider() -> Iterator[Provider]:
    state = Provider()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(self.path)
            if state.down:
                self.send_response(503)
                self.end_headers()
                return
            if self.path == "/.well-known/openid-configuration":
                body = {"issuer": state.url, "jwks_uri": f"{state.url}/keys"}
            elif self.path == "/keys":
                body = state.jwks()
            else:
                self.send_response(404)
                self.end_headers()
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def verifier_for(provider: Provider, **overrides: Any) -> TokenVerifier:
    config = IssuerConfig(
        issuer=provider.url,
        audience=AUDIENCE,
        role_map={"Fleet.Operator": "operator", "Fleet.Admin": "admin"},
        tenant_claim="tid",
        **overrides,
    )
    return TokenVerifier([config], min_refetch_seconds=0.5)


def test_entra_style_token_is_verified_and_roles_mapped(provider: Provider) -> None:
    kid = provider.add_key()
    principal = verifier_for(provider).verify(provider.token(kid, roles=["Fleet.Operator", "Unknown.Role"]))
    assert principal.roles == {Role.OPERATOR}
    assert principal.tenant_id == ENTRA_TENANT and principal.subject == "7d9c2a5e-user"
    assert provider.requests == ["/.well-known/openid-configuration", "/keys"]


def test_explicit_jwks_uri_with_an_entra_issuer_string(provider: Provider) -> None:
    kid = provider.add_key()
    entra = f"https://login.microsoftonline.com/{ENTRA_TENANT}/v2.0"
    config = IssuerConfig(
        issuer=entra,
        audience=AUDIENCE,
        jwks_uri=f"{provider.url}/keys",
        role_map={"Fleet.Operator": "operator"},
    )
    principal = TokenVerifier([config]).verify(provider.token(kid, issuer=entra))
    assert principal.issuer == entra and principal.roles == {Role.OPERATOR}
    assert provider.requests == ["/keys"]  # no discovery when the JWKS URI is configured


def test_keys_are_cached(provider: Provider) -> None:
    kid = provider.add_key()
    verifier = verifier_for(provider)
    for _ in range(5):
        verifier.verify(provider.token(kid))
    assert provider.requests.count("/keys") == 1


def _tampered(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["roles"] = ["Fleet.Admin"]
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


def _alg_none(token: str) -> str:
    payload = token.split(".")[1]
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    return f"{header}.{payload}."


@pytest.mark.parametrize(
    ("attack", "message"),
    [
        ("expired", "expired"),
        ("not_yet_valid", "invalid"),
        ("wrong_audience", "invalid"),
        ("unknown_issuer", "invalid"),
        ("tampered", "invalid"),
        ("alg_none", "invalid"),
        ("hmac_with_public_key", "invalid"),
        ("unknown_kid", "invalid"),
        ("garbage", "invalid"),
        ("no_subject", "invalid"),
    ],
)
def test_attacks_are_refused(provider: Provider, attack: str, message: str) -> None:
    kid = provider.add_key()
    now = datetime.now(UTC)
    tokens = {
        "expired": lambda: provider.token(kid, exp=int((now - timedelta(minutes=5)).timestamp())),
        "not_yet_valid": lambda: provider.token(kid, nbf=int((now + timedelta(minutes=5)).timestamp())),
        "wrong_audience": lambda: provider.token(kid, aud="api://someone-else"),
        "unknown_issuer": lambda: provider.token(kid, issuer="https://evil.invalid/v2.0"),
        "tampered": lambda: _tampered(provider.token(kid)),
        "alg_none": lambda: _alg_none(provider.token(kid)),
        "hmac_with_public_key": lambda: jwt.encode(
            {
                "iss": provider.url,
                "aud": AUDIENCE,
                "sub": "x",
                "exp": int((now + timedelta(minutes=5)).timestamp()),
            },
            provider.keys[kid]
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
            .replace("-", "")[:64],
            algorithm="HS256",
            headers={"kid": kid},
        ),
        "unknown_kid": lambda: provider.token(kid).replace(
            provider.token(kid).split(".")[0],
            base64.urlsafe_b64encode(json.dumps({"alg": "RS256", "kid": "nope"}).encode())
            .rstrip(b"=")
            .decode(),
        ),
        "garbage": lambda: "eyJhbGciOi.not.a-token",
        "no_subject": lambda: provider.token(kid, sub=None),
    }
    token = tokens[attack]()
    with pytest.raises(Unauthenticated) as caught:
        verifier_for(provider).verify(token)
    assert message in caught.value.detail
    assert token not in caught.value.detail


def test_key_rotation_is_followed(provider: Provider) -> None:
    first = provider.add_key()
    verifier = verifier_for(provider)
    verifier.verify(provider.token(first))
    second = provider.add_key()
    del provider.keys[first]
    time.sleep(0.6)
    assert verifier.verify(provider.token(second)).roles == {Role.OPERATOR}
    assert provider.requests.count("/keys") == 2


def test_kid_flooding_does_not_hammer_the_provider(provider: Provider) -> None:
    kid = provider.add_key()
    verifier = verifier_for(provider, algorithms=("RS256",))
    verifier.verify(provider.token(kid))
    stranger = Provider(url=provider.url)
    # Made first: RSA key generation on a busy machine would outlast the refetch interval.
    forged = [stranger.token(stranger.add_key()) for _ in range(20)]
    started = time.monotonic()
    for token in forged:
        with pytest.raises(Unauthenticated):
            verifier.verify(token)
    elapsed = time.monotonic() - started
    # One refetch for the first unknown kid, then at most one per min_refetch_seconds (0.5 s).
    assert provider.requests.count("/keys") <= 2 + int(elapsed / 0.5)
    assert provider.requests.count("/keys") < 1 + len(forged)


def test_cached_keys_survive_a_provider_outage(provider: Provider) -> None:
    kid = provider.add_key()
    verifier = TokenVerifier(
        [IssuerConfig(issuer=provider.url, audience=AUDIENCE)], jwks_cache_seconds=0, min_refetch_seconds=0
    )
    verifier.verify(provider.token(kid))
    provider.down = True
    assert verifier.verify(provider.token(kid)).subject == "7d9c2a5e-user"


def test_unreachable_provider_without_keys_is_503_not_401(provider: Provider) -> None:
    provider.add_key()
    provider.down = True
    with pytest.raises(BackendUnavailable):
        verifier_for(provider).verify(provider.token(next(iter(provider.keys))))
