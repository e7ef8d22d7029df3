"""Output shapes of artifacts and download links."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

ArtifactKindName = Literal["firmware", "package", "patch-bundle", "base-bundle", "file"]


class ArtifactRead(BaseModel):
    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "id": "art_01JD3Q7A5B2C9D4E6F8G0H1J2K",
                    "name": "gateway-firmware",
                    "version": "2.1.0",
                    "kind": "firmware",
                    "filename": "gateway-fw-2.1.0.bin",
                    "device_types": ["gateway-x1"],
                    "size": 52428800,
                    "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                    "uploaded_by": "bob",
                    "created_at": "2026-11-24T08:00:00Z",
                }
            ]
        },
    )

    id: str
    name: str
    version: str
    kind: ArtifactKindName
    filename: str
    device_types: list[str]
    size: int
    sha256: str
    uploaded_by: str
    created_at: datetime


class DownloadLink(BaseModel):
    """A short-lived URL that downloads the artifact without a bearer token."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "url": "/downloads/v1/default/art_01JD3Q7A5B2C9D4E6F8G0H1J2K"
                    "?expires=1795600000&signature=q9Xw...",
                    "expires_at": "2026-11-24T09:15:00Z",
                    "size": 52428800,
                    "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                }
            ]
        }
    )

    url: str
    expires_at: datetime
    size: int
    sha256: str
