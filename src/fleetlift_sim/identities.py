"""Who each virtual device is: a serial, a MAC address and its own Ed25519 key, optionally kept in a
state file so a restarted simulator comes back as the same devices (with what they installed)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

STATE_FORMAT = 1


@dataclass
class SimIdentity:
    serial: str
    mac: str
    private_key: ed25519.Ed25519PrivateKey
    installed: dict[str, str] = field(default_factory=dict)  # release name -> version

    @property
    def attributes(self) -> dict[str, str]:
        return {"serial": self.serial, "mac": self.mac}

    def public_key_pem(self) -> str:
        return (
            self.private_key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )

    def signed_auth_request(
        self, *, device_type: str, architecture: str, tenant: str | None, enrollment_token: str | None
    ) -> tuple[bytes, str]:
        """The authentication body and its signature (base64), as ``X-Fleetlift-Signature`` wants it.
        The body never changes for a device, so callers sign it once and resend it to renew."""
        document: dict[str, Any] = {
            "identity": self.attributes,
            "public_key": self.public_key_pem(),
            "device_type": device_type,
            "architecture": architecture,
        }
        if tenant is not None:
            document["tenant"] = tenant
        if enrollment_token is not None:
            document["enrollment_token"] = enrollment_token
        body = json.dumps(document, separators=(",", ":")).encode()
        return body, base64.b64encode(self.private_key.sign(body)).decode()


def serial_for(prefix: str, number: int) -> str:
    return f"sim-{prefix}-{number:05d}"


def mac_for(serial: str) -> str:
    """A stable, locally administered unicast MAC derived from the serial."""
    digest = hashlib.sha256(serial.encode()).digest()
    return ":".join(f"{octet:02x}" for octet in (0x02, *digest[:5]))


def new_identity(prefix: str, number: int) -> SimIdentity:
    serial = serial_for(prefix, number)
    return SimIdentity(serial, mac_for(serial), ed25519.Ed25519PrivateKey.generate())


def random_prefix() -> str:
    return secrets.token_hex(3)


def _raw_private(key: ed25519.Ed25519PrivateKey) -> str:
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return base64.b64encode(raw).decode()


def load_state(path: Path) -> tuple[str, list[SimIdentity]]:
    """The prefix and identities saved by an earlier run."""
    document = json.loads(path.read_text())
    if document.get("format") != STATE_FORMAT:
        raise ValueError(f"{path}: not a fleetlift-sim state file of format {STATE_FORMAT}")
    identities = [
        SimIdentity(
            serial=entry["serial"],
            mac=entry["mac"],
            private_key=ed25519.Ed25519PrivateKey.from_private_bytes(base64.b64decode(entry["key"])),
            installed=dict(entry.get("installed", {})),
        )
        for entry in document["devices"]
    ]
    return str(document["prefix"]), identities


def save_state(path: Path, prefix: str, identities: list[SimIdentity]) -> None:
    """Write the state file atomically, readable by its owner only (it holds private keys)."""
    document = {
        "format": STATE_FORMAT,
        "prefix": prefix,
        "devices": [
            {
                "serial": identity.serial,
                "mac": identity.mac,
                "key": _raw_private(identity.private_key),
                "installed": identity.installed,
            }
            for identity in identities
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        json.dump(document, file, separators=(",", ":"))
    partial.replace(path)


def fleet_identities(
    count: int, prefix: str | None, state_file: Path | None
) -> tuple[str, list[SimIdentity]]:
    """At least ``count`` identities: those in the state file first (all of them, so saving again loses
    none), new ones after them. A run uses the first ``count``."""
    identities: list[SimIdentity] = []
    if state_file is not None and state_file.exists():
        saved_prefix, identities = load_state(state_file)
        if prefix is not None and prefix != saved_prefix:
            raise ValueError(
                f"{state_file} holds devices with prefix {saved_prefix!r}, not {prefix!r}; "
                "use another state file or drop --prefix"
            )
        prefix = saved_prefix
    chosen_prefix = prefix or random_prefix()
    identities.extend(new_identity(chosen_prefix, number) for number in range(len(identities) + 1, count + 1))
    return chosen_prefix, identities
