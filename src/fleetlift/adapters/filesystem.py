"""Artifact bytes as files under a directory (the embedded default: ``./var/artifacts``)."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

import anyio

from fleetlift.errors import BackendUnavailable

CHUNK = 1024 * 1024
_KEY = re.compile(r"^[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-]+)*$")


def _checked(key: str) -> str:
    # Keys are made by fleetlift, but a key that could climb out of the root is refused anyway.
    if not _KEY.match(key):
        raise ValueError(f"not a storage key: {key!r}")
    return key


class _FileWriter:
    def __init__(self, final: Path, incoming: Path) -> None:
        self.final = final
        self.incoming = incoming
        self.handle: BinaryIO = incoming.open("wb")

    async def write(self, chunk: bytes) -> None:
        await anyio.to_thread.run_sync(self.handle.write, chunk)

    async def commit(self) -> None:
        def finish() -> None:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.handle.close()
            self.final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.incoming, self.final)  # atomic: readers see all of it or nothing

        await anyio.to_thread.run_sync(finish)

    async def abort(self) -> None:
        self.handle.close()
        self.incoming.unlink(missing_ok=True)


class FilesystemStore:
    """Blobs as files; uploads land in ``.incoming`` and are renamed into place on commit."""

    name = "filesystem"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.incoming = root / ".incoming"
        self.incoming.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        """Where a blob lives on disk."""
        return self.root / _checked(key)

    async def writer(self, key: str) -> _FileWriter:
        try:
            return _FileWriter(self.path(key), self.incoming / uuid.uuid4().hex)
        except OSError as error:
            raise BackendUnavailable(f"artifact storage is not writable: {error.strerror}") from None

    async def read(self, key: str, *, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        path = self.path(key)
        handle = await anyio.to_thread.run_sync(path.open, "rb")
        try:
            await anyio.to_thread.run_sync(handle.seek, start)
            remaining = None if end is None else end - start + 1
            while remaining is None or remaining > 0:
                want = CHUNK if remaining is None else min(CHUNK, remaining)
                piece = await anyio.to_thread.run_sync(handle.read, want)
                if not piece:
                    break
                if remaining is not None:
                    remaining -= len(piece)
                yield piece
        finally:
            handle.close()

    async def size(self, key: str) -> int | None:
        try:
            return self.path(key).stat().st_size
        except FileNotFoundError:
            return None

    async def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def direct_url(self, key: str, *, filename: str, expires_at: datetime) -> str | None:
        return None
