"""Bearer-token verification against trusted OIDC issuers (Entra ID included) and the local issuer."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import jwt
from jwt import PyJWK

from fleetlift.auth.local_issuer import TENANT_CLAIM, LocalIssuer
from fleetlift.auth.rules import Principal, roles_from_claim
from fleetlift.errors import BackendUnavailable, Unauthenticated

log = logging.getLogger("fleetlift.auth")

# Asymmetric algorithms only: 'none' and HMAC would let a public key act as a shared secret.
ASYMMETRIC_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)


@dataclass(frozen=True)
class IssuerConfig:
    """One trusted token issuer."""

    issuer: str
    audience: str | list[str]
    jwks_uri: str | None = None
    roles_claim: str = "roles"
    role_map: dict[str, str] = field(default_factory=dict)
    tenant_claim: str | None = None
    algorithms: tuple[str, ...] = ("RS256", "PS256", "ES256")
    leeway_seconds: int = 60


class _KeySet:
    """The signing keys of one remote issuer: cached, refreshed on expiry or an unknown ``kid``
    (key rotation), but never more often than ``min_refetch_seconds`` (``kid`` flooding)."""

    def __init__(self, config: IssuerConfig, http: httpx.Client, ttl: float, min_refetch: float) -> None:
        self.config = config
        self.http = http
        self.ttl = ttl
        self.min_refetch = min_refetch
        self.keys: dict[str, PyJWK] = {}
        self.fetched_at = 0.0
        self.attempted_at = -float("inf")
        self.jwks_uri = config.jwks_uri
        self.lock = threading.Lock()

    def _discover(self) -> str:
        if self.jwks_uri is None:
            url = self.config.issuer.rstrip("/") + "/.well-known/openid-configuration"
            document = self.http.get(url).raise_for_status().json()
            if document.get("issuer") not in (None, self.config.issuer):
                raise ValueError("discovery document names another issuer")
            self.jwks_uri = str(document["jwks_uri"])
        return self.jwks_uri

    def _fetch(self) -> None:
        self.attempted_at = time.monotonic()
        document = self.http.get(self._discover()).raise_for_status().json()
        keys: dict[str, PyJWK] = {}
        for entry in document.get("keys", []):
            if entry.get("use", "sig") != "sig" or "kid" not in entry:
                continue
            try:
                keys[str(entry["kid"])] = PyJWK(entry)
            except (jwt.PyJWKError, jwt.InvalidKeyError):
                continue  # a key type this server cannot use; others may still serve
        self.keys = keys
        self.fetched_at = time.monotonic()

    def key(self, kid: str | None) -> PyJWK:
        with self.lock:
            now = time.monotonic()
            stale = now - self.fetched_at > self.ttl
            unknown = kid is None or kid not in self.keys
            if (stale or unknown) and now - self.attempted_at >= self.min_refetch:
                try:
                    self._fetch()
                except (httpx.HTTPError, ValueError, KeyError) as error:
                    log.warning(
                        "cannot fetch signing keys of %s: %s", self.config.issuer, type(error).__name__
                    )
                    if not self.keys:
                        raise BackendUnavailable(
                            "the identity provider's signing keys cannot be fetched"
                        ) from None
            if kid is None and len(self.keys) == 1:
                return next(iter(self.keys.values()))
            if kid is None or kid not in self.keys:
                raise Unauthenticated("invalid token")
            return self.keys[kid]


class TokenVerifier:
    """Turns a bearer token into a ``Principal`` or raises ``Unauthenticated``; thread-safe."""

    def __init__(
        self,
        issuers: Sequence[IssuerConfig],
        *,
        local_issuer: LocalIssuer | None = None,
        jwks_cache_seconds: float = 3600,
        min_refetch_seconds: float = 30,
        http: httpx.Client | None = None,
    ) -> None:
        self.http = http or httpx.Client(timeout=5.0, follow_redirects=False)
        self.local = local_issuer
        self.configs = {config.issuer: config for config in issuers}
        self.keysets = {
            config.issuer: _KeySet(config, self.http, jwks_cache_seconds, min_refetch_seconds)
            for config in issuers
        }
        if local_issuer is not None:
            self.configs[local_issuer.issuer] = IssuerConfig(
                issuer=local_issuer.issuer,
                audience=local_issuer.audience,
                tenant_claim=TENANT_CLAIM,
                algorithms=("ES256",),
            )

    def _local_key(self, kid: str | None) -> PyJWK:
        assert self.local is not None
        for entry in self.local.jwks()["keys"]:
            if entry["kid"] == kid:
                return PyJWK(entry)
        raise Unauthenticated("invalid token")

    def verify(self, token: str) -> Principal:
        """Check signature, issuer, audience and lifetime; map roles and tenant."""
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise Unauthenticated("invalid token") from None
        issuer = unverified.get("iss")
        config = self.configs.get(issuer) if isinstance(issuer, str) else None
        algorithm = header.get("alg")
        if config is None or algorithm not in config.algorithms or algorithm not in ASYMMETRIC_ALGORITHMS:
            log.debug("token refused: untrusted issuer or algorithm")
            raise Unauthenticated("invalid token")
        kid = header.get("kid")
        if self.local is not None and issuer == self.local.issuer:
            key = self._local_key(kid)
        else:
            key = self.keysets[config.issuer].key(kid if isinstance(kid, str) else None)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key.key,
                algorithms=[algorithm],
                audience=config.audience,
                issuer=config.issuer,
                leeway=config.leeway_seconds,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the token has expired") from None
        except jwt.PyJWTError as error:
            log.debug("token refused: %s", type(error).__name__)
            raise Unauthenticated("invalid token") from None
        tenant = claims.get(config.tenant_claim) if config.tenant_claim else None
        return Principal(
            subject=str(claims["sub"]),
            roles=roles_from_claim(claims.get(config.roles_claim), config.role_map),
            tenant_id=str(tenant) if isinstance(tenant, str) and tenant else "default",
            issuer=config.issuer,
            token_id=claims.get("jti") if isinstance(claims.get("jti"), str) else None,
            expires_at=datetime.fromtimestamp(int(claims["exp"]), UTC),
        )
