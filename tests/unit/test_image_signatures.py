"""Cosign simple-signing signatures: which ones count."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from fleetlift.images.signatures import (
    SignatureLayer,
    dsse_pae,
    load_public_keys,
    signature_tag,
    signed_digest,
    verify_sigstore_bundle,
    verify_simple_signing,
)

from ..oci_layout import simple_signing_payload

DIGEST = "sha256:" + "ab" * 32


def _pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def _sign(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey, payload: bytes
) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        raw = key.sign(payload, ec.ECDSA(hashes.SHA256()))
    elif isinstance(key, rsa.RSAPrivateKey):
        raw = key.sign(payload, padding.PKCS1v15(), hashes.SHA256())
    else:
        raw = key.sign(payload)
    return base64.b64encode(raw).decode()


@pytest.mark.parametrize(
    "make_key",
    [
        lambda: ec.generate_private_key(ec.SECP256R1()),
        lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ed25519.Ed25519PrivateKey.generate,
    ],
)
def test_a_signature_by_a_trusted_key_of_the_right_image_passes(make_key: object) -> None:
    key = make_key()  # type: ignore[operator]
    payload = simple_signing_payload("registry.local/acme/app", DIGEST)
    layers = [SignatureLayer(payload, _sign(key, payload))]
    assert verify_simple_signing(layers, DIGEST, load_public_keys([_pem(key)])) == (
        True,
        "signed by a trusted key",
    )


def test_signatures_that_do_not_count() -> None:
    trusted = ec.generate_private_key(ec.SECP256R1())
    stranger = ec.generate_private_key(ec.SECP256R1())
    keys = load_public_keys([_pem(trusted)])
    payload = simple_signing_payload("registry.local/acme/app", DIGEST)
    other_image = simple_signing_payload("registry.local/acme/app", "sha256:" + "cd" * 32)
    cases = {
        "no cosign signature": [],
        "names another image": [SignatureLayer(other_image, _sign(trusted, other_image))],
        "does not verify": [SignatureLayer(payload, _sign(stranger, payload))],
        "carries no signature": [SignatureLayer(payload, None)],
        "not base64": [SignatureLayer(payload, "***")],
    }
    for expected, layers in cases.items():
        passed, reason = verify_simple_signing(layers, DIGEST, keys)
        assert not passed and expected in reason
    tampered = payload.replace(b"cosign", b"cosigm")
    assert not verify_simple_signing([SignatureLayer(tampered, _sign(trusted, payload))], DIGEST, keys)[0]
    mixed = [
        SignatureLayer(payload, _sign(stranger, payload)),
        SignatureLayer(payload, _sign(trusted, payload)),
    ]
    assert verify_simple_signing(mixed, DIGEST, keys)[0]


def test_helpers() -> None:
    assert signature_tag(DIGEST) == "sha256-" + "ab" * 32 + ".sig"
    assert signed_digest(simple_signing_payload("r", DIGEST)) == DIGEST
    assert signed_digest(b"not json") is None and signed_digest(b'{"critical": {}}') is None
    with pytest.raises(ValueError, match="not a PEM public key"):
        load_public_keys(["-----BEGIN NOTHING-----"])


def sigstore_bundle(
    key: ec.EllipticCurvePrivateKey, digest: str, *, payload_type: str = "application/vnd.in-toto+json"
) -> dict[str, object]:
    """A Sigstore bundle as cosign writes it for a key-signed attestation of ``digest``."""
    statement = {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "registry.local/acme/app", "digest": {"sha256": digest.split(":")[1]}}],
        "predicateType": "https://sigstore.dev/cosign/sign/v1",
        "predicate": {},
    }
    payload = json.dumps(statement).encode()
    signature = key.sign(dsse_pae(payload_type, payload), ec.ECDSA(hashes.SHA256()))
    return {
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": {"publicKey": {"hint": "trusted"}},
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": payload_type,
            "signatures": [{"sig": base64.b64encode(signature).decode(), "keyid": ""}],
        },
    }


def test_sigstore_bundles() -> None:
    trusted = ec.generate_private_key(ec.SECP256R1())
    stranger = ec.generate_private_key(ec.SECP256R1())
    keys = load_public_keys([_pem(trusted)])
    good = sigstore_bundle(trusted, DIGEST)
    assert verify_sigstore_bundle(good, DIGEST, keys) == (True, "a Sigstore bundle signed by a trusted key")
    assert "another image" in verify_sigstore_bundle(good, "sha256:" + "cd" * 32, keys)[1]
    assert "does not verify" in verify_sigstore_bundle(sigstore_bundle(stranger, DIGEST), DIGEST, keys)[1]
    assert (
        "not an in-toto"
        in verify_sigstore_bundle(sigstore_bundle(trusted, DIGEST, payload_type="text/plain"), DIGEST, keys)[
            1
        ]
    )
    tampered = json.loads(json.dumps(good))
    statement = json.loads(base64.b64decode(tampered["dsseEnvelope"]["payload"]))
    statement["predicate"] = {"evil": True}
    tampered["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    assert not verify_sigstore_bundle(tampered, DIGEST, keys)[0]
    assert not verify_sigstore_bundle(None, DIGEST, keys)[0]
    assert not verify_sigstore_bundle(
        {"dsseEnvelope": {"payloadType": "application/vnd.in-toto+json", "payload": "!!"}}, DIGEST, keys
    )[0]
