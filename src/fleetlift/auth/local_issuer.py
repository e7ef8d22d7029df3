"""The embedded default's own token issuer: an ES256 key under the data directory."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import threading
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fleetlift.auth.rules import Role

TENANT_CLAIM = "tenant"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_jwk(key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The public JWK of a P-256 key, with its RFC 7638 thumbprint as ``kid``."""
    numbers = key.public_numbers()
    jwk = {
        "crv": "P-256",
        "kty": "EC",
        "x": _b64(numbers.x.to_bytes(32, "big")),
        "y": _b64(numbers.y.to_bytes(32, "big")),
    }
    canonical = json.dumps(jwk, separators=(",", ":"), sort_keys=True).encode()
    return {**jwk, "kid": _b64(hashlib.sha256(canonical).digest()), "alg": "ES256", "use": "sig"}


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    # Created 0600 from the first byte: the key is never readable by others, not even briefly.
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)


def create_private_once(path: Path, data: bytes) -> None:
    """Create ``path`` holding ``data`` (0600) unless it exists already, atomically across
    processes: server workers starting together on a fresh data directory all end up with the key
    the first one wrote, never with one each."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        # link() fails when the name exists: the one process that links first wins.
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


class LocalIssuer:
    """Issues and publishes keys for tokens of the embedded default."""

    def __init__(
        self,
        key_path: Path,
        *,
        issuer: str = "fleetlift-local",
        audience: str = "fleetlift",
        max_ttl: timedelta = timedelta(hours=24),
    ) -> None:
        self.key_path = key_path
        self.previous_path = key_path.with_name(key_path.name + ".previous.json")
        self.issuer = issuer
        self.audience = audience
        self.max_ttl = max_ttl
        self._lock = threading.Lock()
        self._key = self._load_or_create()

    def _load_or_create(self) -> ec.EllipticCurvePrivateKey:
        with self._lock:
            if not self.key_path.exists():
                create_private_once(self.key_path, self._pem(ec.generate_private_key(ec.SECP256R1())))
            loaded = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{self.key_path} does not hold an EC private key")
        return loaded

    @staticmethod
    def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @property
    def kid(self) -> str:
        return public_jwk(self._key.public_key())["kid"]

    def issue(
        self,
        subject: str,
        roles: Iterable[Role],
        ttl: timedelta,
        *,
        tenant_id: str = "default",
        now: datetime | None = None,
    ) -> str:
        """A signed access token for ``subject`` with ``roles``, valid for ``ttl``."""
        if ttl <= timedelta(0):
            raise ValueError("the token lifetime must be positive")
        if ttl > self.max_ttl:
            raise ValueError(f"the token lifetime may be at most {self.max_ttl}")
        if not subject:
            raise ValueError("the token needs a subject")
        issued = now or datetime.now(UTC)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "roles": sorted(Role(role).value for role in roles),
            TENANT_CLAIM: tenant_id,
            "iat": int(issued.timestamp()),
            "nbf": int(issued.timestamp()),
            "exp": int((issued + ttl).timestamp()),
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._key, algorithm="ES256", headers={"kid": self.kid})

    def _previous(self) -> list[dict[str, str]]:
        if not self.previous_path.exists():
            return []
        keys = json.loads(self.previous_path.read_text()).get("keys", [])
        return [k for k in keys if isinstance(k, dict)]

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The public keys tokens may be signed with: the current one and those rotated out."""
        return {"keys": [public_jwk(self._key.public_key()), *self._previous()]}

    def rotate(self, *, keep_previous: int = 2) -> str:
        """Switch to a new key; tokens signed by the last ``keep_previous`` keys stay valid."""
        with self._lock:
            retired = [public_jwk(self._key.public_key()), *self._previous()][:keep_previous]
            new_key = ec.generate_private_key(ec.SECP256R1())
            self.previous_path.write_text(json.dumps({"keys": retired}))
            _write_private(self.key_path, self._pem(new_key))
            self._key = new_key
        return self.kid
