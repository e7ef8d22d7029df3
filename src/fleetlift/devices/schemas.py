"""Input and output shapes of the device slice."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fleetlift.api.common import DeviceId, Name, ResourceId, StrictModel

Tags = dict[str, Any]

_TAGS_DESCRIPTION = "Free-form JSON tags set by operators, addressable in target conditions as `tags.<key>`."


class DeviceCreate(StrictModel):
    """Register a device ahead of it connecting (an operator-registered device is accepted)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "id": "gw-berlin-0001",
                    "name": "Berlin gateway 1",
                    "device_type": "gateway-x1",
                    "architecture": "arm64",
                    "tags": {"env": "prod", "site": "berlin"},
                }
            ]
        },
    )

    id: DeviceId | None = Field(default=None, description="Your device ID; generated when omitted.")
    name: Name | None = Field(default=None, description="Display name; defaults to the ID.")
    device_type: Name = Field(description="Hardware model, matched against a release's device types.")
    architecture: Name = Field(description="CPU architecture, e.g. arm64, armv7, amd64.")
    tags: Tags = Field(default_factory=dict, description=_TAGS_DESCRIPTION)
    reported: dict[str, Any] = Field(
        default_factory=dict,
        description="Initial inventory; addressable as `properties.reported.<key>`.",
    )
    release_id: ResourceId | None = Field(default=None, description="The release the device runs now.")
    status: Literal["pending", "accepted"] = Field(
        default="accepted", description="Admission status; registering through this API admits by default."
    )


class DevicePreauthorize(StrictModel):
    """An identity and public key admitted before the device first connects."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "identity": {"mac": "dc:a6:32:12:34:56", "serial": "GW1-000123"},
                    "public_key": "-----BEGIN PUBLIC KEY-----\n...\n-----END PUBLIC KEY-----\n",
                    "device_type": "gateway-x1",
                    "architecture": "arm64",
                    "tags": {"site": "berlin"},
                }
            ]
        },
    )

    identity: dict[str, Any] = Field(min_length=1, max_length=20)
    public_key: str = Field(min_length=1, max_length=4096)
    device_type: Name
    architecture: Name
    name: Name | None = None
    tags: Tags = Field(default_factory=dict)


class DeviceUpdate(StrictModel):
    """Replace a device's operator-owned fields (its name and tags)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"name": "Berlin gateway 1", "tags": {"env": "prod", "ring": 2}}]},
    )

    name: Name
    tags: Tags = Field(description=_TAGS_DESCRIPTION)


class DeviceRead(BaseModel):
    """A device as the management API shows it."""

    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "id": "gw-berlin-0001",
                    "name": "Berlin gateway 1",
                    "device_type": "gateway-x1",
                    "architecture": "arm64",
                    "tags": {"env": "prod", "site": "berlin"},
                    "reported": {"os": "Debian 12", "agent_version": "0.1.0"},
                    "release_id": "rel_01JD3Q6R8W2M5E0B9N4T7K1XYZ",
                    "status": "accepted",
                    "last_seen_at": "2026-11-24T09:05:00Z",
                    "created_at": "2026-11-20T10:00:00Z",
                    "updated_at": "2026-11-24T09:05:00Z",
                }
            ]
        },
    )

    id: str
    name: str
    device_type: str
    architecture: str
    tags: Tags
    reported: dict[str, Any] = Field(description="Inventory the device reported.")
    release_id: str | None = Field(description="The release the device runs.")
    status: Literal["pending", "accepted", "rejected", "decommissioned"]
    last_seen_at: datetime | None
    critical_at: datetime | None = Field(
        default=None, description="When the device last sent a critical notification."
    )
    created_at: datetime
    updated_at: datetime


class DeviceDeploymentRead(BaseModel):
    """One deployment that targeted a device, with the device's state in it."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "deployment_id": "dep_01JD3Q9T1C6B2V8N4M7K5X0ABC",
                    "deployment_name": "edge-stack 1.4.0 to production",
                    "release_id": "rel_01JD3Q6R8W2M5E0B9N4T7K1XYZ",
                    "priority": 10,
                    "state": "succeeded",
                    "detail": None,
                    "updated_at": "2026-11-24T09:07:00Z",
                    "deleted": False,
                    "effective": False,
                }
            ]
        }
    )

    deployment_id: str
    deployment_name: str
    release_id: str
    priority: int
    state: str
    detail: str | None
    updated_at: datetime
    deleted: bool = Field(description="The deployment was deleted; its history is kept.")
    effective: bool = Field(description="The deployment the device follows now.")
