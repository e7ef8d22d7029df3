"""Shapes of enrollment tokens: the token itself is answered once, at creation."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fleetlift.api.common import Name, StrictModel


class EnrollmentTokenCreate(StrictModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "line 3 batch 2026-11",
                    "valid_for_hours": 72,
                    "max_uses": 500,
                    "tags": {"site": "plant-3"},
                }
            ]
        },
    )

    name: Name
    valid_for_hours: int = Field(default=24, ge=1, le=24 * 365)
    max_uses: int | None = Field(default=None, ge=1, le=10_000_000)
    tags: dict[str, Any] = Field(default_factory=dict, description="Tags every device enrolled with it gets.")


class EnrollmentTokenRead(BaseModel):
    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "id": "enr_01JD...",
                    "name": "line 3",
                    "tags": {},
                    "expires_at": "2026-11-27T09:00:00Z",
                    "max_uses": 500,
                    "uses": 12,
                    "revoked_at": None,
                    "created_by": "alice",
                    "created_at": "2026-11-24T09:00:00Z",
                }
            ]
        },
    )

    id: str
    name: str
    tags: dict[str, Any]
    expires_at: datetime
    max_uses: int | None
    uses: int
    revoked_at: datetime | None
    created_by: str
    created_at: datetime


class EnrollmentTokenCreated(EnrollmentTokenRead):
    token: str = Field(description="Shown only now; devices send it as `enrollment_token`.")
