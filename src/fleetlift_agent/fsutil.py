"""Writing files so that a power cut leaves either the old or the new content, never half."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write to a sibling temporary file, fsync it, rename it over ``path``, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(descriptor, data)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    os.replace(temporary, path)
    fsync_directory(path.parent)


def write_json_atomically(path: Path, document: Any, mode: int = 0o644) -> None:
    write_atomically(path, json.dumps(document, indent=1, sort_keys=True).encode(), mode)
