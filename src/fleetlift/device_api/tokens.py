"""Short-lived device tokens: ES256 JWTs from the server's own device issuer, valid only on the
device protocol (a separate issuer and audience the management API does not trust).

Checking an ES256 signature costs far more than the rest of a poll, and a device sends the same
token for its whole lifetime, so verified tokens are remembered (a bounded LRU, token to claims,
each entry dropped when the token expires). Only the signature is cached: whether the device is
still admitted, and whether its tokens were revoked, is read from the database on every request.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fleetlift.auth.local_issuer import create_private_once
from fleetlift.errors import Unauthenticated

ISSUER = "fleetlift-devices"
AUDIENCE = "fleetlift-device-api"


@dataclass(frozen=True)
class DeviceClaims:
    tenant_id: str
    device_id: str
    issued_at: datetime


# Room for a fleet of this many polling devices per server process (about 0.5 KiB an entry).
DEFAULT_CACHE_SIZE = 131_072


class VerifiedTokens:
    """A bounded LRU of verified tokens and their claims, each valid until its token's expiry.

    Entries are tuples of strings, numbers and a datetime, which the garbage collector stops
    tracking: a full collection does not walk a fleet's worth of cached tokens (it stalled the
    event loop). Thread-safe: the synchronous routes check tokens from the thread pool."""

    def __init__(self, max_entries: int = DEFAULT_CACHE_SIZE) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, str, str, datetime]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, token: str, now: float) -> DeviceClaims | None:
        """The claims of a token verified before and not expired yet."""
        with self._lock:
            entry = self._entries.get(token)
            if entry is None:
                return None
            if entry[0] <= now:  # the same rule as PyJWT: a token is dead from its `exp` on
                del self._entries[token]
                return None
            self._entries.move_to_end(token)
        return DeviceClaims(entry[1], entry[2], entry[3])

    def put(self, token: str, expires: float, claims: DeviceClaims) -> None:
        if self.max_entries <= 0:
            return
        with self._lock:
            self._entries[token] = (expires, claims.tenant_id, claims.device_id, claims.issued_at)
            self._entries.move_to_end(token)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class DeviceTokens:
    """Issues and checks device tokens with a key kept under the data directory."""

    def __init__(self, key_path: Path, ttl: timedelta, *, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self.ttl = ttl
        self.verified = VerifiedTokens(cache_size)
        if not key_path.exists():
            pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            create_private_once(key_path, pem)
        loaded = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_path} does not hold an EC private key")
        self._key = loaded
        self._public_key = loaded.public_key()

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
        token = jwt.encode(claims, self._key, algorithm="ES256")
        # The device polls with it next: this process need not check its own signature again.
        known = DeviceClaims(tenant_id, device_id, datetime.fromtimestamp(int(issued.timestamp()), UTC))
        self.verified.put(token, float(int(expires.timestamp())), known)
        return token, expires

    def verify(self, token: str) -> DeviceClaims:
        """The device a token speaks for; 401 when it is not one of ours or has expired."""
        now = time.time()
        known = self.verified.get(token, now)
        if known is not None:
            return known
        try:
            claims = jwt.decode(
                token,
                self._public_key,
                algorithms=["ES256"],
                audience=AUDIENCE,
                issuer=ISSUER,
                options={"require": ["exp", "iat", "sub", "tenant"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the device token has expired; authenticate again") from None
        except jwt.PyJWTError:
            raise Unauthenticated("invalid device token") from None
        verified = DeviceClaims(
            str(claims["tenant"]), str(claims["sub"]), datetime.fromtimestamp(claims["iat"], UTC)
        )
        self.verified.put(token, float(claims["exp"]), verified)
        return verified
