"""The device's own key and identity: the key pair is made on the device on first start and the
private half never leaves it; authentication requests are signed with it."""

from __future__ import annotations

import base64
import hashlib
import os
import platform
import socket
import uuid
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15

from fleetlift_agent.fsutil import write_durably

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class DeviceKey:
    """The device's private key, kept in ``path`` (mode 0600)."""

    def __init__(self, key: PrivateKey) -> None:
        self._key = key

    @classmethod
    def load_or_create(cls, path: Path, algorithm: str = "ed25519") -> DeviceKey:
        if path.exists():
            loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(
                loaded, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
            ):
                raise ValueError(f"{path} holds a key type the server does not accept")
            return cls(loaded)
        key: PrivateKey
        if algorithm == "ed25519":
            key = ed25519.Ed25519PrivateKey.generate()
        elif algorithm == "ecdsa-p256":
            key = ec.generate_private_key(ec.SECP256R1())
        elif algorithm == "rsa":
            key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
        else:
            raise ValueError(f"unknown key algorithm {algorithm!r}: ed25519, ecdsa-p256 or rsa")
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        write_durably(path, pem, mode=0o600)
        return cls(key)

    def public_pem(self) -> str:
        return (
            self._key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )

    def sign(self, body: bytes) -> str:
        """Base64 signature over the exact request body, as X-Fleetlift-Signature carries it."""
        if isinstance(self._key, ed25519.Ed25519PrivateKey):
            signature = self._key.sign(body)
        elif isinstance(self._key, ec.EllipticCurvePrivateKey):
            signature = self._key.sign(body, ec.ECDSA(hashes.SHA256()))
        else:
            signature = self._key.sign(body, PKCS1v15(), hashes.SHA256())
        return base64.b64encode(signature).decode()


def _primary_mac() -> str:
    """The MAC of the first physical interface, else the one Python derives."""
    net = Path("/sys/class/net")
    if net.is_dir():
        for interface in sorted(net.iterdir()):
            if interface.name == "lo" or not (interface / "device").exists():
                continue
            try:
                mac = (interface / "address").read_text().strip()
            except OSError:
                continue
            if mac and mac != "00:00:00:00:00:00":
                return mac
    node = uuid.getnode()
    return ":".join(f"{(node >> shift) & 0xFF:02x}" for shift in range(40, -1, -8))


def default_identity() -> dict[str, str]:
    """Identity attributes found on the machine: its machine ID (or a digest of it), MAC, hostname."""
    identity = {"mac": _primary_mac(), "hostname": socket.gethostname()}
    for candidate in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            machine_id = Path(candidate).read_text().strip()
        except OSError:
            continue
        if machine_id:
            # The raw machine ID is meant to stay on the machine; a keyed digest is shared instead.
            identity["machine"] = hashlib.sha256(b"fleetlift:" + machine_id.encode()).hexdigest()[:32]
            break
    return identity


def default_architecture() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm"}.get(machine, machine)


def free_disk_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize
