"""Download and TUF verification against a real fleetlift server running in a thread: signed links
from the server, its TUF repository, and the attacks a device must notice."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from fleetlift.app import create_app, local_issuer
from fleetlift.artifacts.rules import link_signature
from fleetlift.auth import Role
from fleetlift.config import Settings
from fleetlift.migrate import upgrade
from fleetlift.trust.repository import tenant_repository
from fleetlift_agent.download import Downloader, LinkExpired
from fleetlift_agent.trust import ANCHOR_NAME, TargetVerifier, TrustUnavailable, UntrustedTarget

from ..ports import free_port


@dataclass
class Server:
    base: str
    http: httpx.Client
    settings: Settings
    link_secret: bytes

    def upload(self, content: bytes, name: str, version: str = "1") -> dict[str, Any]:
        response = self.http.post(
            "/api/v1/artifacts",
            params={"name": name, "version": version},
            content=content,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert response.status_code == 201, response.text
        artifact: dict[str, Any] = response.json()
        return artifact

    def link(self, artifact: dict[str, Any]) -> str:
        """A signed link, as a device gets it in its poll answer (relative to the server)."""
        response = self.http.post(f"/api/v1/artifacts/{artifact['id']}/link")
        assert response.status_code == 200, response.text
        url: str = response.json()["url"]
        assert url.startswith("/downloads/v1/")
        return url

    @property
    def metadata_dir(self) -> Path:
        return self.settings.data_dir / "tuf" / "default" / "metadata"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    settings = Settings(data_dir=tmp_path / "server", log_level="WARNING")
    upgrade(settings.resolved_database_url)
    app = create_app(settings)
    port = free_port()
    instance = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            httpx.get(f"{base}/healthz")
            break
        except httpx.TransportError:
            time.sleep(0.05)
    token = local_issuer(settings).issue("alice", [Role.ADMIN], timedelta(minutes=10))
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as http:
        yield Server(base, http, settings, app.state.link_secret)
    instance.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def device(tmp_path: Path) -> Path:
    path = tmp_path / "device"
    path.mkdir()
    return path


def shipped_root(server: Server, device: Path) -> Path:
    """The root.json baked into the device image."""
    path = device / "shipped-root.json"
    path.write_bytes((server.metadata_dir / "1.root.json").read_bytes())
    return path


def fetch(server: Server, device: Path, artifact: dict[str, Any], url: str) -> Path:
    downloader = Downloader(device / "downloads", base_url=server.base, min_free_bytes=0, backoff=0.01)
    return downloader.fetch(
        url, size=artifact["size"], sha256=artifact["sha256"], name=f"{artifact['id']}-{artifact['filename']}"
    )


def test_a_download_through_a_signed_link_passes_tuf(server: Server, device: Path) -> None:
    content = b"\x7fELF firmware 2.1.0" * 20_000
    artifact = server.upload(content, "fw.bin")
    assert artifact["sha256"] == hashlib.sha256(content).hexdigest()
    path = fetch(server, device, artifact, server.link(artifact))
    assert path.read_bytes() == content
    verifier = TargetVerifier(server.base, "default", device, root_path=shipped_root(server, device))
    verifier.verify(f"{artifact['id']}/{artifact['filename']}", path)
    assert (device / "tuf" / "default" / "root.json").exists()  # metadata kept in the agent's data dir


def test_a_resumed_download_from_the_server_passes_tuf(server: Server, device: Path) -> None:
    content = bytes(range(256)) * 1000
    artifact = server.upload(content, "pkg.tar")
    name = f"{artifact['id']}-{artifact['filename']}"
    (device / "downloads").mkdir()
    (device / "downloads" / f"{name}.part").write_bytes(content[:100_000])  # left by a previous process
    path = fetch(server, device, artifact, server.link(artifact))
    assert path.read_bytes() == content
    TargetVerifier(server.base, "default", device, root_path=shipped_root(server, device)).verify(
        f"{artifact['id']}/pkg.tar", path
    )


def test_a_tampered_file_fails_tuf(server: Server, device: Path) -> None:
    artifact = server.upload(b"genuine bytes" * 100, "fw.bin")
    path = fetch(server, device, artifact, server.link(artifact))
    path.write_bytes(b"malicious bytes" * 100)
    verifier = TargetVerifier(server.base, "default", device, root_path=shipped_root(server, device))
    with pytest.raises(UntrustedTarget, match="does not match the signed metadata"):
        verifier.verify(f"{artifact['id']}/fw.bin", path)


def test_an_unknown_target_is_untrusted(server: Server, device: Path) -> None:
    artifact = server.upload(b"x", "a.bin")
    path = fetch(server, device, artifact, server.link(artifact))
    verifier = TargetVerifier(server.base, "default", device, root_path=shipped_root(server, device))
    with pytest.raises(UntrustedTarget, match="not a target"):
        verifier.verify("art_nothing/none.bin", path)


def test_an_expired_link_raises_link_expired(server: Server, device: Path) -> None:
    artifact = server.upload(b"soon gone" * 10, "fw.bin")
    resource = f"default/{artifact['id']}"
    expires = int(time.time()) - 5
    signature = link_signature(server.link_secret, resource, expires)
    with pytest.raises(LinkExpired):
        fetch(server, device, artifact, f"/downloads/v1/{resource}?expires={expires}&signature={signature}")
    assert not list((device / "downloads").iterdir())


def test_a_release_published_after_the_last_refresh_is_found(server: Server, device: Path) -> None:
    first = server.upload(b"first", "a.bin")
    verifier = TargetVerifier(
        server.base, "default", device, root_path=shipped_root(server, device), refresh_interval=3600
    )
    verifier.verify(f"{first['id']}/a.bin", fetch(server, device, first, server.link(first)))
    second = server.upload(b"second", "b.bin")
    # Cached metadata does not know it yet; one fresh look does.
    verifier.verify(f"{second['id']}/b.bin", fetch(server, device, second, server.link(second)))


def test_trust_on_first_use_keeps_the_first_root(server: Server, device: Path) -> None:
    artifact = server.upload(b"tofu", "a.bin")
    path = fetch(server, device, artifact, server.link(artifact))
    TargetVerifier(server.base, "default", device).verify(f"{artifact['id']}/a.bin", path)
    kept = device / "tuf" / "default" / ANCHOR_NAME
    assert kept.read_bytes() == (server.metadata_dir / "1.root.json").read_bytes()
    # Later processes use the kept root, not whatever the server says version 1 is now.
    kept.write_text(json.dumps({"signed": {"_type": "root", "version": 1}}))
    with pytest.raises(UntrustedTarget, match="TUF metadata rejected"):
        TargetVerifier(server.base, "default", device).verify(f"{artifact['id']}/a.bin", path)


def test_frozen_metadata_is_untrusted(server: Server, device: Path) -> None:
    artifact = server.upload(b"x", "a.bin")
    path = fetch(server, device, artifact, server.link(artifact))
    repository = tenant_repository(server.settings.data_dir, "default")
    repository.refresh_timestamp(datetime.now(UTC) - timedelta(days=3))  # a replayed, stale view
    verifier = TargetVerifier(server.base, "default", device, root_path=shipped_root(server, device))
    with pytest.raises(UntrustedTarget, match="ExpiredMetadataError"):
        verifier.verify(f"{artifact['id']}/a.bin", path)


def test_forged_metadata_is_untrusted(server: Server, device: Path) -> None:
    artifact = server.upload(b"x", "a.bin")
    path = fetch(server, device, artifact, server.link(artifact))
    targets = json.loads((server.metadata_dir / "targets.json").read_bytes())
    targets["signed"]["targets"][f"{artifact['id']}/a.bin"]["hashes"]["sha256"] = "0" * 64
    (server.metadata_dir / "targets.json").write_text(json.dumps(targets))
    verifier = TargetVerifier(server.base, "default", device, root_path=shipped_root(server, device))
    with pytest.raises(UntrustedTarget, match="TUF metadata rejected"):
        verifier.verify(f"{artifact['id']}/a.bin", path)


def test_an_unreachable_server_is_trust_unavailable(server: Server, device: Path) -> None:
    artifact = server.upload(b"x", "a.bin")
    path = fetch(server, device, artifact, server.link(artifact))
    root = shipped_root(server, device)
    nowhere = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TrustUnavailable):
        TargetVerifier(nowhere, "default", device, root_path=root, timeout=2).verify(
            f"{artifact['id']}/a.bin", path
        )
    with pytest.raises(TrustUnavailable):
        TargetVerifier(nowhere, "default", device / "other", timeout=2).verify(
            f"{artifact['id']}/a.bin", path
        )


def test_metadata_is_refreshed_at_most_once_per_interval(server: Server, device: Path) -> None:
    artifact = server.upload(b"x", "a.bin")
    path = fetch(server, device, artifact, server.link(artifact))
    root = shipped_root(server, device)
    cached = TargetVerifier(server.base, "default", device / "a", root_path=root, refresh_interval=3600)
    eager = TargetVerifier(server.base, "default", device / "b", root_path=root, refresh_interval=0)
    target = f"{artifact['id']}/a.bin"
    cached.verify(target, path)
    eager.verify(target, path)
    (server.metadata_dir / "timestamp.json").write_text("{}")  # the repository breaks after that
    cached.verify(target, path)  # within its interval: no request, the verified view is reused
    with pytest.raises(UntrustedTarget):
        eager.verify(target, path)
