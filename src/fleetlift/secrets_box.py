"""Secrets at rest: AES-256-GCM with a key the database never sees."""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


class SecretBox:
    """Seals short secrets (passwords, tokens) bound to a context such as ``tenant/registry``, so
    a ciphertext copied to another row does not open."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the secrets key must be 32 bytes")
        self._aead = AESGCM(key)

    def seal(self, plaintext: str, *, context: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), context.encode())
        return base64.b64encode(nonce + sealed).decode()

    def open(self, token: str, *, context: str) -> str:
        try:
            raw = base64.b64decode(token, validate=True)
            return self._aead.decrypt(raw[:12], raw[12:], context.encode()).decode()
        except (InvalidTag, ValueError, binascii.Error) as error:
            raise ValueError("the secret cannot be opened with this key and context") from error

    def __repr__(self) -> str:
        return "SecretBox(key=***)"


def load_or_create_key(path: Path) -> bytes:
    """The 32-byte key kept at ``path`` (created 0600 on first use)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(secrets.token_bytes(32))
    return path.read_bytes()
