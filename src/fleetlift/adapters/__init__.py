"""Adapters behind the ports, and the one place that picks them from settings."""

from __future__ import annotations

from collections.abc import Callable

from fleetlift.config import Settings
from fleetlift.ports import ArtifactStore


def _filesystem(settings: Settings) -> ArtifactStore:
    from fleetlift.adapters.filesystem import FilesystemStore

    return FilesystemStore(settings.artifact_root)


def _azure_blob(settings: Settings) -> ArtifactStore:
    from fleetlift.adapters.azure_blob import AzureBlobStore

    if not settings.azure_blob_connection_string:
        raise ValueError("FLEETLIFT_AZURE_BLOB_CONNECTION_STRING is required for the azure_blob store")
    return AzureBlobStore(
        settings.azure_blob_connection_string.get_secret_value(), settings.azure_blob_container
    )


def _memory(settings: Settings) -> ArtifactStore:
    from fleetlift.adapters.memory import MemoryStore

    return MemoryStore()


ARTIFACT_STORES: dict[str, Callable[[Settings], ArtifactStore]] = {
    "filesystem": _filesystem,
    "azure_blob": _azure_blob,
    "memory": _memory,
}


def build_artifact_store(settings: Settings) -> ArtifactStore:
    """The artifact store the settings name."""
    return ARTIFACT_STORES[settings.artifact_store](settings)
