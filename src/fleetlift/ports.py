"""The ports: one small Protocol per kind of backend. Adapters live in ``fleetlift.adapters`` and
are chosen in one place, ``fleetlift.adapters.build_artifact_store``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from fleetlift.images.rules import Credentials, ImageRef, ResolvedImage
    from fleetlift.images.signatures import SignatureLayer


class ImageRegistry(Protocol):
    """Reads container images from OCI registries. Example::

    resolved = await registry.resolve(parse_image_reference("ghcr.io/acme/app:1.4"))
    resolved.digest      # "sha256:..." of the manifest or index bytes, computed, not trusted
    resolved.platforms   # (Platform("linux", "arm64", "v8"), ...)
    """

    def bound(self, credentials: Callable[[str], Credentials | None]) -> ImageRegistry:
        """The same registry access, authenticating with ``credentials`` (registry -> login)."""
        ...

    async def resolve(self, ref: ImageRef) -> ResolvedImage:
        """The digest a reference points at now and the platforms it offers."""
        ...

    async def signature_layers(self, ref: ImageRef, digest: str) -> list[SignatureLayer]:
        """The cosign simple-signing layers stored for ``digest``; empty when it is unsigned."""
        ...

    async def sigstore_bundles(self, ref: ImageRef, digest: str) -> list[object]:
        """The Sigstore bundles attached to ``digest`` as OCI referrers."""
        ...

    async def attestations(self, ref: ImageRef, digest: str) -> list[object]:
        """The DSSE envelopes cosign attached to ``digest`` (``sha256-<hex>.att``)."""
        ...

    async def vulnerability_report(self, ref: ImageRef, digest: str) -> dict[str, Any] | None:
        """The Trivy JSON report attached to ``digest`` as a referrer, or None."""
        ...


class BlobWriter(Protocol):
    """One upload in progress. Nothing is visible under the key until ``commit``; ``abort`` leaves
    nothing behind."""

    async def write(self, chunk: bytes) -> None: ...

    async def commit(self) -> None: ...

    async def abort(self) -> None: ...


class ArtifactStore(Protocol):
    """Where artifact bytes live: a filesystem, Azure Blob Storage, ...

    Keys are opaque, chosen by fleetlift (``<tenant>/<id>``), never by users. Example::

        writer = await store.writer("default/blob_01J...")
        async for chunk in upload:
            await writer.write(chunk)
        await writer.commit()
        async for piece in store.read("default/blob_01J...", start=100, end=199):
            ...  # bytes 100..199 inclusive, in pieces of bounded size
    """

    name: str

    async def writer(self, key: str) -> BlobWriter:
        """Start writing a new blob under ``key``."""
        ...

    def read(self, key: str, *, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Bytes ``start`` to ``end`` (inclusive; the last byte when None), in bounded pieces."""
        ...

    async def size(self, key: str) -> int | None:
        """The blob's size, or None when there is no such blob."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the blob; a missing blob is not an error."""
        ...

    def direct_url(self, key: str, *, filename: str, expires_at: datetime) -> str | None:
        """A URL a device can download from without passing through fleetlift (a SAS link), or
        None when the store has none and fleetlift must serve the bytes itself."""
        ...


class DeviceChannel(Protocol):
    """Tells devices to ask for their instructions now, instead of at their next poll. Example::

    await channel.notify("default", ["gw-0001", "gw-0002"])   # how many messages went out

    A notification carries no instructions and no secrets: the device still fetches what to do
    over the authenticated device API. Losing one only delays the device until its next poll, so
    adapters may drop notifications under pressure but must never block the caller for long.
    """

    async def notify(self, tenant_id: str, device_ids: Sequence[str]) -> int:
        """Ask these devices of the tenant to check now; how many notifications were sent."""
        ...

    async def close(self) -> None:
        """Release connections; further ``notify`` calls may fail."""
        ...
