"""A TUF repository per tenant: signed metadata for every artifact, so devices verify what they
install with ``tuf.ngclient`` and resist rollback, freeze, mix-and-match and endless-data attacks.

Layout under the data directory: ``tuf/<tenant>/metadata/{N.root,timestamp,snapshot,targets}.json``
and the role keys under ``keys/tuf/<tenant>/<role>.pem``. Snapshot and timestamp keys are online;
root and targets keys are online in the embedded default and can be moved offline."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

ROLES = ("root", "targets", "snapshot", "timestamp")
EXPIRY = {
    "root": timedelta(days=365),
    "targets": timedelta(days=90),
    "snapshot": timedelta(days=7),
    "timestamp": timedelta(days=1),
}
_SERIALIZER = JSONSerializer(compact=False)


class TrustRepository:
    """The TUF metadata of one tenant."""

    def __init__(self, metadata_dir: Path, keys_dir: Path) -> None:
        self.metadata_dir = metadata_dir
        self.keys_dir = keys_dir

    # Keys ------------------------------------------------------------------------------------

    def _signer(self, role: str, key_file: Path | None = None) -> CryptoSigner:
        path = key_file or self.keys_dir / f"{role}.pem"
        if not path.exists():
            raise PermissionError(
                f"the {role} key is offline; sign with `fleetlift keys sign {role} --key FILE`"
            )
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(private, ed25519.Ed25519PrivateKey):
            raise ValueError(f"{path} does not hold an Ed25519 private key")
        return CryptoSigner(private)

    def is_online(self, role: str) -> bool:
        """Whether the server holds the role's private key."""
        return (self.keys_dir / f"{role}.pem").exists()

    def _new_signer(self, role: str) -> CryptoSigner:
        signer = CryptoSigner.generate_ed25519()
        self.keys_dir.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.keys_dir / f"{role}.pem", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(signer.private_bytes)
        return signer

    # Metadata --------------------------------------------------------------------------------

    def _path(self, name: str) -> Path:
        return self.metadata_dir / f"{name}.json"

    def _write(self, name: str, metadata: Metadata) -> None:  # type: ignore[type-arg]
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        temporary = self._path(name).with_suffix(".tmp")
        temporary.write_bytes(metadata.to_bytes(_SERIALIZER))
        os.replace(temporary, self._path(name))  # readers see the old file or the new, never half

    def _read(self, name: str) -> Metadata:  # type: ignore[type-arg]
        return Metadata.from_file(str(self._path(name)))

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        with (self.metadata_dir / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one writer at a time, across processes
            yield

    def ensure_initialised(self, now: datetime | None = None) -> None:
        """Create keys and version 1 of every role the first time."""
        with self._locked():
            if self._path("1.root").exists():
                return
            now = now or datetime.now(UTC)
            signers = {role: self._new_signer(role) for role in ROLES}
            root = Root(expires=now + EXPIRY["root"], consistent_snapshot=False)
            for role, signer in signers.items():
                root.add_key(signer.public_key, role)
            documents: dict[str, Metadata] = {  # type: ignore[type-arg]
                "root": Metadata(root),
                "targets": Metadata(Targets(expires=now + EXPIRY["targets"])),
                "snapshot": Metadata(Snapshot(expires=now + EXPIRY["snapshot"])),
                "timestamp": Metadata(Timestamp(expires=now + EXPIRY["timestamp"])),
            }
            for role, document in documents.items():
                document.sign(signers[role])
            self._write("1.root", documents["root"])
            self._write("root", documents["root"])
            for role in ("targets", "snapshot", "timestamp"):
                self._write(role, documents[role])

    def add_target(self, path: str, *, length: int, sha256: str, now: datetime | None = None) -> bool:
        """Publish a target (an artifact), re-signing targets, snapshot and timestamp. With the
        targets key offline the target waits in ``pending.json`` for ``sign_targets``; returns
        whether it was published now."""
        self.ensure_initialised(now)
        with self._locked():
            pending = self._pending()
            pending[path] = {"length": length, "sha256": sha256}
            if not self.is_online("targets"):
                self._save_pending(pending)
                return False
            self._sign_targets(pending, self._signer("targets"), now or datetime.now(UTC))
            return True

    def sign_targets(self, key_file: Path, now: datetime | None = None) -> int:
        """Sign the pending targets with an offline targets key; returns how many were published."""
        with self._locked():
            signer = self._signer("targets", key_file)
            if signer.public_key.keyid not in self._read("root").signed.roles["targets"].keyids:
                # Publishing under a key root does not name would lock every device out.
                raise ValueError(f"{key_file} is not the targets key this repository's root names")
            pending = self._pending()
            self._sign_targets(pending, signer, now or datetime.now(UTC))
            return len(pending)

    def _pending(self) -> dict[str, dict[str, object]]:
        path = self.metadata_dir / "pending.json"
        return dict(json.loads(path.read_text())) if path.exists() else {}

    def _save_pending(self, pending: dict[str, dict[str, object]]) -> None:
        (self.metadata_dir / "pending.json").write_text(json.dumps(pending))

    def _sign_targets(
        self, pending: dict[str, dict[str, object]], signer: CryptoSigner, now: datetime
    ) -> None:
        targets = self._read("targets")
        for path, facts in pending.items():
            targets.signed.targets[path] = TargetFile(
                int(str(facts["length"])), {"sha256": str(facts["sha256"])}, path
            )
        targets.signed.version += 1
        targets.signed.expires = now + EXPIRY["targets"]
        targets.signatures.clear()
        targets.sign(signer)
        self._write("targets", targets)
        (self.metadata_dir / "pending.json").unlink(missing_ok=True)
        self._publish(targets.signed.version, now)

    def rotate(self, role: str, *, root_key_file: Path | None = None, now: datetime | None = None) -> int:
        """Replace a role's key with a new online one: a new root version, signed by the old and
        the new root keys (so devices can follow the chain), names it; returns the root version."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
        self.ensure_initialised(now)
        with self._locked():
            now = now or datetime.now(UTC)
            old_root_signer = self._signer("root", root_key_file)
            root = self._read("root")
            for keyid in list(root.signed.roles[role].keyids):
                root.signed.revoke_key(keyid, role)
            signer = self._new_signer(role)
            root.signed.add_key(signer.public_key, role)
            root.signed.version += 1
            root.signed.expires = now + EXPIRY["root"]
            root.signatures.clear()
            root.sign(old_root_signer, append=True)
            if role == "root":
                root.sign(signer, append=True)
            self._write(f"{root.signed.version}.root", root)
            self._write("root", root)
            if role == "targets":
                self._sign_targets(self._pending(), signer, now)
            elif role == "snapshot":
                self._publish(self._read("targets").signed.version, now)
            elif role == "timestamp":
                self.refresh_timestamp(now)
            return int(root.signed.version)

    def take_offline(self, role: str, destination: Path) -> None:
        """Move a role's private key out of the server (to removable media, an HSM import...)."""
        if role not in ("root", "targets"):
            raise ValueError(
                "only the root and targets keys can be kept offline; snapshot and timestamp sign online"
            )
        source = self.keys_dir / f"{role}.pem"
        if not source.exists():
            raise FileNotFoundError(f"the {role} key is not on this server")
        descriptor = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(source.read_bytes())
        source.unlink()

    def _publish(self, targets_version: int, now: datetime) -> None:
        snapshot = self._read("snapshot")
        snapshot.signed.meta["targets.json"] = MetaFile(targets_version)
        snapshot.signed.version += 1
        snapshot.signed.expires = now + EXPIRY["snapshot"]
        snapshot.signatures.clear()
        snapshot.sign(self._signer("snapshot"))
        self._write("snapshot", snapshot)
        self.refresh_timestamp(now, snapshot_version=snapshot.signed.version)

    def refresh_timestamp(self, now: datetime | None = None, *, snapshot_version: int | None = None) -> None:
        """A new timestamp, so devices see the repository is alive (freeze attacks expire)."""
        now = now or datetime.now(UTC)
        timestamp = self._read("timestamp")
        if snapshot_version is not None:
            timestamp.signed.snapshot_meta = MetaFile(snapshot_version)
        timestamp.signed.version += 1
        timestamp.signed.expires = now + EXPIRY["timestamp"]
        timestamp.signatures.clear()
        timestamp.sign(self._signer("timestamp"))
        self._write("timestamp", timestamp)

    def metadata_bytes(self, name: str) -> bytes | None:
        """A metadata file as served (``timestamp``, ``snapshot``, ``targets``, ``N.root``)."""
        path = self._path(name)
        return path.read_bytes() if path.exists() else None

    def target_hashes(self, path: str) -> str | None:
        """The SHA-256 the targets metadata records for ``path``, if published."""
        target = self._read("targets").signed.targets.get(path)
        return None if target is None else target.hashes.get("sha256")


def tenant_repository(data_dir: Path, tenant_id: str) -> TrustRepository:
    """Where a tenant's TUF repository lives under the data directory."""
    return TrustRepository(data_dir / "tuf" / tenant_id / "metadata", data_dir / "keys" / "tuf" / tenant_id)
