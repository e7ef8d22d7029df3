"""Cosign signatures in the "simple signing" format, checked with configured public keys (pure).

Cosign stores the signatures of image ``sha256:<hex>`` as an image tagged ``sha256-<hex>.sig`` in
the same repository: each layer is a simple-signing JSON payload naming the signed manifest
digest, and the layer's ``dev.cosignproject.cosign/signature`` annotation holds the base64
signature over the payload bytes."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
DSSE_ENVELOPE = "application/vnd.dsse.envelope.v1+json"
VULN_PREDICATE = "https://cosign.sigstore.dev/attestation/vuln/v1"
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey


def signature_tag(digest: str, suffix: str = "sig") -> str:
    """The tag cosign stores an image's signatures (``sig``) or attestations (``att``) under."""
    algorithm, _, hex_digest = digest.partition(":")
    return f"{algorithm}-{hex_digest}.{suffix}"


def load_public_keys(pems: Sequence[str]) -> list[PublicKey]:
    """Public keys from PEM text; anything else is a configuration error said plainly."""
    keys: list[PublicKey] = []
    for index, pem in enumerate(pems):
        try:
            key = serialization.load_pem_public_key(pem.encode())
        except ValueError as error:
            raise ValueError(f"signature key {index + 1} is not a PEM public key") from error
        if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
            raise ValueError(f"signature key {index + 1} is of a type cosign does not sign with")
        keys.append(key)
    return keys


def _verifies(key: PublicKey, payload: bytes, signature: bytes) -> bool:
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, payload, padding.PKCS1v15(), hashes.SHA256())
        else:
            key.verify(signature, payload)
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True)
class SignatureLayer:
    """One layer of a ``.sig`` image: the payload bytes and the signature annotation."""

    payload: bytes
    signature_b64: str | None


def signed_digest(payload: bytes) -> str | None:
    """The manifest digest a simple-signing payload vouches for, or None if it is not one."""
    try:
        document = json.loads(payload)
        digest = document["critical"]["image"]["docker-manifest-digest"]
    except (ValueError, KeyError, TypeError):
        return None
    return digest if isinstance(digest, str) else None


def verify_simple_signing(
    layers: Sequence[SignatureLayer], digest: str, keys: Sequence[PublicKey]
) -> tuple[bool, str]:
    """Whether some layer is a valid signature of ``digest`` by one of ``keys``, and why not."""
    if not layers:
        return False, "the image has no cosign signature"
    reasons = []
    for layer in layers:
        if signed_digest(layer.payload) != digest:
            reasons.append("a signature payload names another image")
            continue
        if not layer.signature_b64:
            reasons.append("a signature layer carries no signature")
            continue
        try:
            signature = base64.b64decode(layer.signature_b64, validate=True)
        except (ValueError, binascii.Error):
            reasons.append("a signature is not base64")
            continue
        if any(_verifies(key, layer.payload, signature) for key in keys):
            return True, "signed by a trusted key"
        reasons.append("a signature does not verify with any trusted key")
    return False, "; ".join(dict.fromkeys(reasons))


# --- Sigstore bundles (OCI 1.1 referrers): a DSSE envelope over an in-toto statement ----------

SIGSTORE_BUNDLE_TYPES = frozenset(
    {
        "application/vnd.dev.sigstore.bundle+json;version=0.3",
        "application/vnd.dev.sigstore.bundle.v0.3+json",
        "application/vnd.dev.sigstore.bundle+json;version=0.2",
    }
)
IN_TOTO = "application/vnd.in-toto+json"


def dsse_pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what a DSSE signature actually signs."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def open_dsse(envelope: object, digest: str) -> tuple[dict[str, Any] | None, str]:
    """The in-toto statement inside a DSSE envelope, if it is one about ``digest``."""
    if not isinstance(envelope, dict):
        return None, "no DSSE envelope"
    payload_type = envelope.get("payloadType")
    if payload_type != IN_TOTO:
        return None, f"the envelope carries {payload_type!r}, not an in-toto statement"
    try:
        statement = json.loads(base64.b64decode(envelope.get("payload", ""), validate=True))
    except (ValueError, binascii.Error, TypeError):
        return None, "the envelope's payload is not a base64 JSON statement"
    algorithm, _, hex_digest = digest.partition(":")
    subjects = statement.get("subject") if isinstance(statement, dict) else None
    if not isinstance(subjects, list) or not any(
        isinstance(s, dict) and isinstance(s.get("digest"), dict) and s["digest"].get(algorithm) == hex_digest
        for s in subjects
    ):
        return None, "the statement is about another image"
    return statement, "about this image"


def dsse_signed_by(envelope: dict[str, Any], keys: Sequence[PublicKey]) -> bool:
    """Whether one of the envelope's signatures verifies with a trusted key."""
    payload = base64.b64decode(envelope["payload"])
    signed_bytes = dsse_pae(str(envelope["payloadType"]), payload)
    for entry in envelope.get("signatures", []):
        try:
            signature = base64.b64decode(entry.get("sig", ""), validate=True)
        except (ValueError, binascii.Error, AttributeError):
            continue
        if any(_verifies(key, signed_bytes, signature) for key in keys):
            return True
    return False


def verify_sigstore_bundle(bundle: object, digest: str, keys: Sequence[PublicKey]) -> tuple[bool, str]:
    """Whether a Sigstore bundle holds a DSSE envelope, signed by a trusted key, over an in-toto
    statement whose subject is ``digest``."""
    envelope = bundle.get("dsseEnvelope") if isinstance(bundle, dict) else None
    if not isinstance(envelope, dict):
        return False, "the bundle holds no DSSE envelope"
    statement, reason = open_dsse(envelope, digest)
    if statement is None:
        return False, reason
    if dsse_signed_by(envelope, keys):
        return True, "a Sigstore bundle signed by a trusted key"
    return False, "the bundle's signature does not verify with any trusted key"
