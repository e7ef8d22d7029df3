"""Artifact bytes in Azure Blob Storage (block blobs), with SAS links straight to the blob."""

from __future__ import annotations

import base64
import io
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobBlock, BlobSasPermissions, generate_blob_sas
from azure.storage.blob.aio import BlobServiceClient, ContainerClient

from fleetlift.errors import BackendUnavailable

BLOCK = 4 * 1024 * 1024  # staged block size: large blobs go up in parallel-safe pieces


def _unavailable(error: AzureError) -> BackendUnavailable:
    # The SDK's messages can carry request URLs with SAS tokens: keep only the error's kind.
    return BackendUnavailable(f"blob storage failed: {type(error).__name__}")


class _BlockWriter:
    """Stages blocks as bytes arrive; the blob exists only once the block list is committed."""

    def __init__(self, container: ContainerClient, key: str) -> None:
        self.blob = container.get_blob_client(key)
        self.buffer = bytearray()
        self.blocks: list[str] = []

    async def _stage(self, data: bytes) -> None:
        block_id = base64.b64encode(uuid.uuid4().bytes).decode()
        try:
            # A stream, not raw bytes: aiohttp would copy a large bytes body on the event loop.
            await self.blob.stage_block(block_id, io.BytesIO(data), length=len(data))
        except AzureError as error:
            raise _unavailable(error) from None
        self.blocks.append(block_id)

    async def write(self, chunk: bytes) -> None:
        self.buffer += chunk
        while len(self.buffer) >= BLOCK:
            await self._stage(bytes(self.buffer[:BLOCK]))
            del self.buffer[:BLOCK]

    async def commit(self) -> None:
        if self.buffer or not self.blocks:
            await self._stage(bytes(self.buffer))
            self.buffer.clear()
        try:
            await self.blob.commit_block_list([BlobBlock(block_id=block) for block in self.blocks])
        except AzureError as error:
            raise _unavailable(error) from None

    async def abort(self) -> None:
        # Uncommitted blocks are garbage-collected by the service after a week; nothing is visible.
        self.buffer.clear()
        self.blocks.clear()


class AzureBlobStore:
    """One container of an Azure Storage account (or Azurite, the emulator)."""

    name = "azure_blob"

    def __init__(self, connection_string: str, container: str) -> None:
        self.service = BlobServiceClient.from_connection_string(connection_string)
        self.container = self.service.get_container_client(container)
        self._credential = self.service.credential
        self._ready = False

    async def _container(self) -> ContainerClient:
        if not self._ready:
            try:
                await self.container.create_container()
            except ResourceExistsError:
                pass
            except AzureError as error:
                raise _unavailable(error) from None
            self._ready = True
        return self.container

    async def writer(self, key: str) -> _BlockWriter:
        return _BlockWriter(await self._container(), key)

    async def read(self, key: str, *, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        blob = (await self._container()).get_blob_client(key)
        length = None if end is None else end - start + 1
        try:
            downloader = await blob.download_blob(offset=start, length=length)
            async for piece in downloader.chunks():
                yield piece
        except AzureError as error:
            raise _unavailable(error) from None

    async def size(self, key: str) -> int | None:
        blob = (await self._container()).get_blob_client(key)
        try:
            properties = await blob.get_blob_properties()
        except ResourceNotFoundError:
            return None
        except AzureError as error:
            raise _unavailable(error) from None
        return int(properties.size)

    async def delete(self, key: str) -> None:
        blob = (await self._container()).get_blob_client(key)
        try:
            await blob.delete_blob()
        except ResourceNotFoundError:
            pass
        except AzureError as error:
            raise _unavailable(error) from None

    def direct_url(self, key: str, *, filename: str, expires_at: datetime) -> str | None:
        account_key = getattr(self._credential, "account_key", None)
        if account_key is None:
            return None  # no shared key (e.g. Entra ID auth): fleetlift serves the bytes itself
        token = generate_blob_sas(
            account_name=self.service.account_name or "",
            container_name=self.container.container_name,
            blob_name=key,
            account_key=account_key,
            permission=BlobSasPermissions(read=True),
            start=datetime.now(UTC) - timedelta(minutes=5),  # tolerate clock skew
            expiry=expires_at,
            content_disposition=f'attachment; filename="{filename}"',
        )
        return f"{self.container.url}/{key}?{token}"

    async def close(self) -> None:
        """Release the HTTP connections."""
        await self.service.close()
