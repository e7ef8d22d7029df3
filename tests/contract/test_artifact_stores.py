"""One contract, every artifact store: filesystem, the in-memory fake, and Azure Blob Storage
(against Azurite, started here)."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import httpx
import pytest

from fleetlift.adapters.filesystem import FilesystemStore
from fleetlift.adapters.memory import MemoryStore
from fleetlift.ports import ArtifactStore

from ..azurite import azurite, unavailable_reason


@pytest.fixture(scope="module")
def azurite_connection(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"Azure Blob leg skipped: {reason}")
    with azurite(tmp_path_factory.mktemp("azurite")) as connection:
        yield connection


StoreFactory = Callable[[], AbstractAsyncContextManager[ArtifactStore]]


@pytest.fixture(params=["filesystem", "memory", "azure_blob"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Opens the store inside the test's own event loop (the Azure client is bound to its loop)."""
    connection = request.getfixturevalue("azurite_connection") if request.param == "azure_blob" else ""

    @asynccontextmanager
    async def opened() -> AsyncIterator[ArtifactStore]:
        if request.param == "filesystem":
            yield FilesystemStore(tmp_path / "artifacts")
        elif request.param == "memory":
            yield MemoryStore()
        else:
            from fleetlift.adapters.azure_blob import AzureBlobStore

            azure = AzureBlobStore(connection, f"c{uuid.uuid4().hex[:12]}")
            try:
                yield azure
            finally:
                await azure.close()

    return opened


async def _put(store: ArtifactStore, key: str, data: bytes, piece: int = 300_000) -> None:
    writer = await store.writer(key)
    for offset in range(0, len(data), piece):
        await writer.write(data[offset : offset + piece])
    await writer.commit()


async def _get(store: ArtifactStore, key: str, start: int = 0, end: int | None = None) -> bytes:
    parts = [piece async for piece in store.read(key, start=start, end=end)]
    assert all(len(piece) <= 8 * 1024 * 1024 for piece in parts)  # bounded pieces, never one blob
    return b"".join(parts)


def test_write_then_read_whole_and_ranges(open_store: StoreFactory) -> None:
    data = os.urandom(9 * 1024 * 1024 + 123)  # crosses Azure's 4 MiB blocks

    async def scenario() -> None:
        async with open_store() as store:
            await body(store)

    async def body(store: ArtifactStore) -> None:
        await _put(store, "t1/blob_a", data)
        assert await store.size("t1/blob_a") == len(data)
        assert hashlib.sha256(await _get(store, "t1/blob_a")).digest() == hashlib.sha256(data).digest()
        assert await _get(store, "t1/blob_a", 0, 0) == data[:1]
        assert (
            await _get(store, "t1/blob_a", 4 * 1024 * 1024 - 5, 4 * 1024 * 1024 + 5)
            == data[4 * 1024 * 1024 - 5 : 4 * 1024 * 1024 + 6]
        )
        assert await _get(store, "t1/blob_a", len(data) - 10) == data[-10:]

    anyio.run(scenario)


def test_nothing_is_visible_before_commit_and_abort_leaves_nothing(open_store: StoreFactory) -> None:
    async def scenario() -> None:
        async with open_store() as store:
            await body(store)

    async def body(store: ArtifactStore) -> None:
        writer = await store.writer("t1/blob_b")
        await writer.write(b"half an upload")
        assert await store.size("t1/blob_b") is None
        await writer.abort()
        assert await store.size("t1/blob_b") is None

    anyio.run(scenario)


def test_empty_blob_and_missing_blob(open_store: StoreFactory) -> None:
    async def scenario() -> None:
        async with open_store() as store:
            await body(store)

    async def body(store: ArtifactStore) -> None:
        await _put(store, "t1/empty", b"")
        assert await store.size("t1/empty") == 0
        assert await store.size("t1/never") is None

    anyio.run(scenario)


def test_delete_is_idempotent(open_store: StoreFactory) -> None:
    async def scenario() -> None:
        async with open_store() as store:
            await body(store)

    async def body(store: ArtifactStore) -> None:
        await _put(store, "t1/blob_c", b"bytes")
        await store.delete("t1/blob_c")
        assert await store.size("t1/blob_c") is None
        await store.delete("t1/blob_c")

    anyio.run(scenario)


def test_direct_urls(open_store: StoreFactory) -> None:
    data = os.urandom(70_000)

    async def scenario() -> tuple[str, str | None]:
        async with open_store() as store:
            await _put(store, "t1/blob_d", data)
            expires_at = datetime.now(UTC) + timedelta(minutes=5)
            return store.name, store.direct_url("t1/blob_d", filename="fw.bin", expires_at=expires_at)

    name, url = anyio.run(scenario)
    if name in ("filesystem", "memory"):
        assert url is None  # fleetlift serves these itself
        return
    assert url is not None and "sig=" in url
    whole = httpx.get(url)
    assert whole.status_code == 200 and whole.content == data
    assert 'filename="fw.bin"' in whole.headers["content-disposition"]
    resumed = httpx.get(url, headers={"Range": "bytes=1000-"})
    assert resumed.status_code == 206 and data[:1000] + resumed.content == data
    tampered = url.replace("blob_d", "blob_e")
    assert httpx.get(tampered).status_code == 403


def test_filesystem_refuses_keys_that_climb_out(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "root")
    for key in ("../escape", "t1/../../x", "/abs", "t1//x", "a\\b"):
        with pytest.raises(ValueError, match="not a storage key"):
            store.path(key)
