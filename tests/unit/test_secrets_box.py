"""Sealing secrets at rest."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fleetlift.secrets_box import SecretBox, load_or_create_key


def test_seal_and_open() -> None:
    box = SecretBox(os.urandom(32))
    sealed = box.seal("hunter2", context="t1/registry.local")
    assert "hunter2" not in sealed
    assert box.open(sealed, context="t1/registry.local") == "hunter2"
    assert box.seal("hunter2", context="x") != box.seal("hunter2", context="x")  # fresh nonce each time
    with pytest.raises(ValueError, match="cannot be opened"):
        box.open(sealed, context="t2/registry.local")  # copied to another row
    with pytest.raises(ValueError, match="cannot be opened"):
        SecretBox(os.urandom(32)).open(sealed, context="t1/registry.local")
    with pytest.raises(ValueError):
        box.open("not base64!", context="t1/registry.local")
    assert "key" in repr(box) and "***" in repr(box)
    with pytest.raises(ValueError, match="32 bytes"):
        SecretBox(b"short")


def test_key_file(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "secrets.key"
    key = load_or_create_key(path)
    assert len(key) == 32 and load_or_create_key(path) == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
