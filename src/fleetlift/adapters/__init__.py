"""Adapters behind the ports, and the one place that picks them from settings."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fleetlift.config import Settings
from fleetlift.images.rules import Credentials, credentials_from_docker_config
from fleetlift.ports import ArtifactStore, ImageRegistry


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


def docker_config_credentials(settings: Settings) -> Callable[[str], Credentials | None]:
    """Credentials by registry from the configured Docker config.json (none when unset)."""
    docker_config: dict[str, Any] = {}
    if settings.registry_auth_file is not None:
        docker_config = json.loads(settings.registry_auth_file.read_text())
    return lambda registry: credentials_from_docker_config(docker_config, registry)


def build_image_registry(settings: Settings) -> ImageRegistry:
    """The registry client, with credentials from the configured Docker config.json."""
    from fleetlift.adapters.oci_registry import OciRegistryClient

    return OciRegistryClient(
        credentials=docker_config_credentials(settings),
        plain_http=frozenset(settings.registry_plain_http),
        timeout=settings.registry_timeout_seconds,
    )


def build_artifact_store(settings: Settings) -> ArtifactStore:
    """The artifact store the settings name."""
    return ARTIFACT_STORES[settings.artifact_store](settings)
