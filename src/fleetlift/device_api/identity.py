"""Device identity (pure): the signed authentication request and the ID an identity maps to."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from fleetlift.errors import InvalidInput, Unauthenticated

DevicePublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey


def load_device_key(pem: str) -> DevicePublicKey:
    """A device's public key: Ed25519, ECDSA P-256, or RSA of at least 2048 bits."""
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except ValueError:
        raise InvalidInput("public_key is not a PEM public key") from None
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048:
        return key
    raise InvalidInput("public_key must be Ed25519, ECDSA P-256 or RSA of 2048 bits or more")


def verify_request_signature(key: DevicePublicKey, body: bytes, signature_b64: str | None) -> None:
    """The request body must be signed by the private half of the key it carries."""
    if not signature_b64:
        raise Unauthenticated("the authentication request is not signed (X-Fleetlift-Signature)")
    try:
        signature = base64.b64decode(signature_b64, validate=True)
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, body)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, body, ec.ECDSA(hashes.SHA256()))
        else:
            key.verify(signature, body, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError, binascii.Error):
        raise Unauthenticated("the authentication request's signature does not verify") from None


def key_fingerprint(key: DevicePublicKey) -> str:
    """A stable fingerprint of a public key (SHA-256 of its DER form)."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def device_id_for(identity: Mapping[str, Any]) -> str:
    """The device ID an identity maps to: its ``device_id`` attribute, or a digest of the whole
    identity (canonical JSON), so the same attributes always name the same device."""
    explicit = identity.get("device_id")
    if isinstance(explicit, str) and explicit:
        return explicit
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()
    return "dev_" + hashlib.sha256(canonical).hexdigest()[:32]
