"""An in-memory artifact store: the fake the unit tests use in place of real storage."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime


class _MemoryWriter:
    def __init__(self, store: MemoryStore, key: str) -> None:
        self.store = store
        self.key = key
        self.parts: list[bytes] = []

    async def write(self, chunk: bytes) -> None:
        self.parts.append(chunk)

    async def commit(self) -> None:
        self.store.blobs[self.key] = b"".join(self.parts)

    async def abort(self) -> None:
        self.parts.clear()


class MemoryStore:
    """Blobs in a dict; reads come in small pieces, like a real store's."""

    name = "memory"

    def __init__(self, piece: int = 64 * 1024) -> None:
        self.blobs: dict[str, bytes] = {}
        self.piece = piece

    async def writer(self, key: str) -> _MemoryWriter:
        return _MemoryWriter(self, key)

    async def read(self, key: str, *, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        data = self.blobs[key]
        stop = len(data) if end is None else min(end + 1, len(data))
        for offset in range(start, stop, self.piece):
            yield data[offset : min(offset + self.piece, stop)]

    async def size(self, key: str) -> int | None:
        blob = self.blobs.get(key)
        return None if blob is None else len(blob)

    async def delete(self, key: str) -> None:
        self.blobs.pop(key, None)

    def direct_url(self, key: str, *, filename: str, expires_at: datetime) -> str | None:
        return None
