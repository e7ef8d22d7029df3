"""Devices verify artifacts with TUF: `tuf.ngclient.Updater` against the running server, and the
known attacks (tampered target, rollback of timestamp and snapshot, mixed metadata versions,
endless data, freeze, forged metadata), each rejected."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import uvicorn
from tuf.api import exceptions as tuf_errors
from tuf.ngclient import Updater, UpdaterConfig

from fleetlift.app import create_app, local_issuer
from fleetlift.auth import Role
from fleetlift.config import Settings
from fleetlift.migrate import upgrade
from fleetlift.trust.repository import tenant_repository

from ..ports import free_port


@dataclass
class Server:
    base: str
    http: httpx.Client
    settings: Settings

    def upload(self, content: bytes, name: str) -> dict[str, object]:
        response = self.http.post(
            "/api/v1/artifacts",
            params={"name": name, "version": "1"},
            content=content,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert response.status_code == 201, response.text
        return response.json()

    @property
    def metadata_dir(self) -> Path:
        return self.settings.data_dir / "tuf" / "default" / "metadata"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    settings = Settings(data_dir=tmp_path / "server", log_level="WARNING")
    upgrade(settings.resolved_database_url)
    port = free_port()
    instance = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            httpx.get(f"{base}/healthz")
            break
        except httpx.TransportError:
            time.sleep(0.05)
    token = local_issuer(settings).issue("alice", [Role.ADMIN], timedelta(minutes=10))
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as http:
        yield Server(base, http, settings)
    instance.should_exit = True
    thread.join(timeout=10)


def updater(server: Server, device_dir: Path, config: UpdaterConfig | None = None) -> Updater:
    """A device's updater: it trusts the root it shipped with (here: version 1, fetched once)."""
    device_dir.mkdir(parents=True, exist_ok=True)
    (device_dir / "targets").mkdir(exist_ok=True)
    shipped_root = (server.metadata_dir / "1.root.json").read_bytes()
    return Updater(
        metadata_dir=str(device_dir),
        metadata_base_url=f"{server.base}/tuf/v1/default/metadata/",
        target_dir=str(device_dir / "targets"),
        target_base_url=f"{server.base}/tuf/v1/default/targets/",
        config=config,
        bootstrap=shipped_root,
    )


def test_a_device_verifies_and_downloads_an_artifact(server: Server, tmp_path: Path) -> None:
    content = b"\x7fELF firmware 2.1.0" * 4096
    artifact = server.upload(content, "fw.bin")
    device = updater(server, tmp_path / "device")
    device.refresh()
    info = device.get_targetinfo(f"{artifact['id']}/fw.bin")
    assert info is not None and info.length == len(content)
    assert Path(device.download_target(info)).read_bytes() == content
    assert device.get_targetinfo("art_nothing/none.bin") is None


def test_a_tampered_target_is_rejected(server: Server, tmp_path: Path) -> None:
    artifact = server.upload(b"genuine bytes" * 100, "fw.bin")
    stored = next((server.settings.artifact_root / "default").iterdir())
    stored.write_bytes(b"malicious bytes" * 100)
    device = updater(server, tmp_path / "device")
    device.refresh()
    info = device.get_targetinfo(f"{artifact['id']}/fw.bin")
    assert info is not None
    with pytest.raises(tuf_errors.RepositoryError):
        device.download_target(info)


def _snapshot_files(server: Server) -> dict[str, bytes]:
    return {
        name: (server.metadata_dir / f"{name}.json").read_bytes()
        for name in ("timestamp", "snapshot", "targets")
    }


def _restore(server: Server, files: dict[str, bytes], *names: str) -> None:
    for name in names:
        (server.metadata_dir / f"{name}.json").write_bytes(files[name])


@pytest.mark.parametrize(
    ("replayed", "new_device", "error"),
    [
        (("timestamp",), False, tuf_errors.BadVersionNumberError),  # an old timestamp
        (("timestamp", "snapshot"), False, tuf_errors.BadVersionNumberError),  # an old snapshot
        # Mix and match: the current snapshot with an older targets file, to a device that
        # has to fetch targets.
        (("targets",), True, tuf_errors.BadVersionNumberError),
    ],
)
def test_rollback_and_mix_and_match_are_rejected(
    server: Server, tmp_path: Path, replayed: tuple[str, ...], new_device: bool, error: type[Exception]
) -> None:
    server.upload(b"first", "a.bin")
    old = _snapshot_files(server)
    server.upload(b"second", "b.bin")
    device = updater(server, tmp_path / "device")
    device.refresh()  # the device has seen the newer versions
    _restore(server, old, *replayed)
    again = updater(server, tmp_path / ("other-device" if new_device else "device"))
    with pytest.raises(error):
        again.refresh()
        again.get_targetinfo("anything/at-all.bin")


def test_endless_data_is_cut_off(server: Server, tmp_path: Path) -> None:
    server.upload(b"x", "a.bin")
    timestamp = json.loads((server.metadata_dir / "timestamp.json").read_bytes())
    timestamp["padding"] = "A" * 100_000
    (server.metadata_dir / "timestamp.json").write_text(json.dumps(timestamp))
    device = updater(server, tmp_path / "device", UpdaterConfig(timestamp_max_length=16_384))
    with pytest.raises(tuf_errors.DownloadError):
        device.refresh()


def test_frozen_metadata_expires(server: Server, tmp_path: Path) -> None:
    server.upload(b"x", "a.bin")
    repository = tenant_repository(server.settings.data_dir, "default")
    repository.refresh_timestamp(datetime.now(UTC) - timedelta(days=3))  # an attacker replays a stale view
    device = updater(server, tmp_path / "device")
    with pytest.raises(tuf_errors.ExpiredMetadataError):
        device.refresh()


def test_forged_metadata_is_rejected(server: Server, tmp_path: Path) -> None:
    artifact = server.upload(b"x", "a.bin")
    targets = json.loads((server.metadata_dir / "targets.json").read_bytes())
    path = f"{artifact['id']}/a.bin"
    targets["signed"]["targets"][path]["hashes"]["sha256"] = "0" * 64  # changed without the key
    (server.metadata_dir / "targets.json").write_text(json.dumps(targets))
    device = updater(server, tmp_path / "device")
    with pytest.raises(tuf_errors.RepositoryError):
        device.refresh()
        device.get_targetinfo(path)


def _cli(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETLIFT_")}
    env["FLEETLIFT_DATA_DIR"] = str(server.settings.data_dir)
    return subprocess.run(
        [str(Path(sys.executable).parent / "fleetlift"), "keys", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_devices_follow_key_rotation(server: Server, tmp_path: Path) -> None:
    first = server.upload(b"before rotation", "a.bin")
    device = updater(server, tmp_path / "device")
    device.refresh()
    for role in ("timestamp", "snapshot", "targets", "root"):
        result = _cli(server, "rotate", role)
        assert result.returncode == 0, result.stderr
    assert (server.metadata_dir / "5.root.json").exists()
    second = server.upload(b"after rotation", "b.bin")
    again = updater(server, tmp_path / "device")  # trusts root 1 from before: walks 2..5
    again.refresh()
    assert again.get_targetinfo(f"{first['id']}/a.bin") is not None
    info = again.get_targetinfo(f"{second['id']}/b.bin")
    assert info is not None and Path(again.download_target(info)).read_bytes() == b"after rotation"


def test_an_offline_targets_key_signs_pending_targets(server: Server, tmp_path: Path) -> None:
    server.upload(b"online", "a.bin")
    offline = tmp_path / "usb" / "targets.pem"
    offline.parent.mkdir()
    assert _cli(server, "take-offline", "targets", "--to", str(offline)).returncode == 0
    assert _cli(server, "take-offline", "snapshot", "--to", str(tmp_path / "nope.pem")).returncode == 2
    waiting = server.upload(b"waits for a signature", "b.bin")
    device = updater(server, tmp_path / "device")
    device.refresh()
    assert device.get_targetinfo(f"{waiting['id']}/b.bin") is None  # not published without the key
    assert _cli(server, "sign", "targets", "--key", str(offline)).returncode == 0
    again = updater(server, tmp_path / "device")
    again.refresh()
    info = again.get_targetinfo(f"{waiting['id']}/b.bin")
    assert info is not None and Path(again.download_target(info)).read_bytes() == b"waits for a signature"
    stranger = tmp_path / "stranger.pem"
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    stranger.write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    server.upload(b"another", "c.bin")
    wrong_key = _cli(server, "sign", "targets", "--key", str(stranger))
    assert wrong_key.returncode == 2 and "not the targets key" in wrong_key.stderr
    still_fine = updater(server, tmp_path / "device")
    still_fine.refresh()  # nothing was published under the stranger's key
