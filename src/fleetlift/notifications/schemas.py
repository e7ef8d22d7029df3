"""Shapes of notifications, logs and inventory."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fleetlift.api.common import StrictModel

Level = Literal["info", "warning", "critical"]


class NotificationCreate(StrictModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"level": "critical", "message": "disk 98% full on /data"}]},
    )

    level: Level
    message: str = Field(min_length=1, max_length=4000)


class NotificationRead(BaseModel):
    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "id": "ntf_01JD3QC0A1B2C3D4E5F6G7H8J9",
                    "device_id": "gw-berlin-0001",
                    "level": "critical",
                    "message": "disk 98% full on /data",
                    "created_at": "2026-11-24T09:10:00Z",
                }
            ]
        },
    )

    id: str
    device_id: str
    level: Level
    message: str
    created_at: datetime


class LogUpload(StrictModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"log": "12:00:01 install: checksum mismatch\n"}]}
    )

    log: str = Field(max_length=900_000)


class LogRead(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "device_id": "gw-1",
                    "deployment_id": "dep_01J...",
                    "log": "...",
                    "uploaded_at": "2026-11-24T09:10:00Z",
                }
            ]
        }
    )

    deployment_id: str
    device_id: str
    log: str
    uploaded_at: datetime


class Inventory(BaseModel):
    """Anything the device reports about itself: OS, architecture, agent version, installed
    releases, free disk, what an inventory script adds. Merged into its reported properties."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [{"os": "Debian 12", "arch": "arm64", "agent_version": "0.1.0", "disk_free_mb": 5120}]
        },
    )

    def values(self) -> dict[str, Any]:
        return dict(self.model_extra or {})
