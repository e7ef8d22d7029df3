"""Writing files so that a power cut leaves either the old or the new content, never half."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fleetlift_agent.installers import InstallError


def fsync_directory(directory: Path) -> None:
    """Make entries created, renamed or removed in ``directory`` durable."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_durably(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically; after a power cut it holds the old or the new bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.new")
    with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    fsync_directory(path.parent)


def write_json_durably(path: Path, document: Mapping[str, Any]) -> None:
    write_durably(path, json.dumps(document, sort_keys=True).encode())


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object at ``path``, or None when there is none (or only a torn temporary)."""
    try:
        document = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError as error:
        raise InstallError(f"{path} is damaged: {error}") from error
    if not isinstance(document, dict):
        raise InstallError(f"{path} is damaged: not a JSON object")
    return document


def remove_durably(path: Path) -> None:
    """Remove a file or a directory tree if it exists, durably."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    else:
        return
    fsync_directory(path.parent)
