"""Server workers starting together on a fresh data directory must end up with one signing key."""

from __future__ import annotations

import multiprocessing
import stat
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from fleetlift.auth.local_issuer import LocalIssuer, create_private_once
from fleetlift.device_api.tokens import DeviceTokens

WORKERS = 6


def _public_pem(kind: str, path: str, start: Any) -> bytes:
    start.wait()
    if kind == "device":
        tokens = DeviceTokens(Path(path), timedelta(hours=1), cache_size=0)
        token, _ = tokens.issue(tenant_id="default", device_id="gw-1")
        return token.encode()
    issuer = LocalIssuer(Path(path))
    return issuer.kid.encode()


def _worker(kind: str, path: str, start: Any, results: Any) -> None:
    results.put(_public_pem(kind, path, start))


@pytest.mark.parametrize("kind", ["device", "local"])
def test_workers_starting_together_share_one_key(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "keys" / f"{kind}.pem"
    context = multiprocessing.get_context("fork")
    start = context.Barrier(WORKERS)
    results = context.Queue()
    processes = [
        context.Process(target=_worker, args=(kind, str(path), start, results)) for _ in range(WORKERS)
    ]
    for process in processes:
        process.start()
    answers = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    assert all(process.exitcode == 0 for process in processes)
    if kind == "device":
        # Every worker's token verifies with the key on disk, so every worker holds that key.
        on_disk = DeviceTokens(path, timedelta(hours=1), cache_size=0)
        assert {on_disk.verify(token.decode()).device_id for token in answers} == {"gw-1"}
    else:
        assert len(set(answers)) == 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary files left


def test_an_existing_key_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    create_private_once(path, b"first")
    create_private_once(path, b"second")
    assert path.read_bytes() == b"first"
