"""Shapes of registry credentials: the password goes in, never out."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, SecretStr, StringConstraints

from fleetlift.api.common import StrictModel

RegistryHost = Annotated[
    str, StringConstraints(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$")
]


class RegistryCredentialWrite(StrictModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"username": "ci-bot", "password": "s3cr3t-token"}]}
    )

    username: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    password: SecretStr


class RegistryCredentialRead(BaseModel):
    """What fleetlift knows about a registry's credentials, without the password."""

    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "registry": "registry.example.com",
                    "username": "ci-bot",
                    "updated_by": "alice",
                    "updated_at": "2026-11-24T09:00:00Z",
                }
            ]
        },
    )

    registry: str
    username: str
    updated_by: str
    updated_at: datetime
