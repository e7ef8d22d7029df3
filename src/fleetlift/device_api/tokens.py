"""Short-lived device tokens: ES256 JWTs from the server's own device issuer, valid only on the
device protocol (a separate issuer and audience the management API does not trust)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fleetlift.errors import Unauthenticated

ISSUER = "fleetlift-devices"
AUDIENCE = "fleetlift-device-api"


@dataclass(frozen=True)
class DeviceClaims:
    tenant_id: str
    device_id: str
    issued_at: datetime


class DeviceTokens:
    """Issues and checks device tokens with a key kept under the data directory."""

    def __init__(self, key_path: Path, ttl: timedelta) -> None:
        self.ttl = ttl
        if not key_path.exists():
            key_path.parent.mkdir(parents=True, exist_ok=True)
            pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            key_path.touch(mode=0o600)
            key_path.write_bytes(pem)
        loaded = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_path} does not hold an EC private key")
        self._key = loaded

    def issue(self, *, tenant_id: str, device_id: str, now: datetime | None = None) -> tuple[str, datetime]:
        """A token for one device of one tenant, and when it expires."""
        issued = now or datetime.now(UTC)
        expires = issued + self.ttl
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": device_id,
            "tenant": tenant_id,
            "iat": int(issued.timestamp()),
            "exp": int(expires.timestamp()),
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._key, algorithm="ES256"), expires

    def verify(self, token: str) -> DeviceClaims:
        """The device a token speaks for; 401 when it is not one of ours or has expired."""
        try:
            claims = jwt.decode(
                token,
                self._key.public_key(),
                algorithms=["ES256"],
                audience=AUDIENCE,
                issuer=ISSUER,
                options={"require": ["exp", "iat", "sub", "tenant"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the device token has expired; authenticate again") from None
        except jwt.PyJWTError:
            raise Unauthenticated("invalid device token") from None
        return DeviceClaims(
            str(claims["tenant"]), str(claims["sub"]), datetime.fromtimestamp(claims["iat"], UTC)
        )
