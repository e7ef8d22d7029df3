"""Shapes of IoT hubs, their device sync, edge deployments delivered through them, and update triggers.

The connection string goes in and never comes out: answers carry the host and the policy name only.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, StringConstraints, model_validator

from fleetlift.api.common import DeviceId, Name, ResourceId, StrictModel

HostName = Annotated[
    str,
    StringConstraints(min_length=3, max_length=255, pattern=r"^[A-Za-z0-9](?:[A-Za-z0-9.\-]*[A-Za-z0-9])?$"),
]
SyncCondition = Annotated[str, StringConstraints(min_length=1, max_length=4096)]
HubAuth = Literal["sas", "entra"]
RevisionState = Literal["queued", "applied", "retiring", "retired", "failed"]


class IotHubCreate(StrictModel):
    """A hub to deliver through: a service connection string (shared access policy), or a host name
    with ``auth: "entra"`` (the server's Entra ID identity, role *IoT Hub Data Contributor*)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "production hub",
                    "connection_string": "HostName=contoso.azure-devices.net;SharedAccessKeyName=iothubowner;"
                    "SharedAccessKey=<base64 key>",
                    "sync_condition": "tags.env = 'prod'",
                    "sync_interval_seconds": 300,
                },
                {"name": "entra hub", "host_name": "contoso.azure-devices.net", "auth": "entra"},
            ]
        },
    )

    name: Name
    connection_string: SecretStr | None = Field(
        default=None,
        description="`HostName=...;SharedAccessKeyName=...;SharedAccessKey=...` of a hub-level policy "
        "with registry read/write and service connect. Stored sealed; never answered or logged.",
    )
    host_name: HostName | None = Field(default=None, description="With `auth: entra`: the hub's host name.")
    auth: HubAuth = Field(default="sas", description="`sas` (from the connection string) or `entra`.")
    sync_condition: SyncCondition | None = Field(
        default=None,
        description="A WHERE clause in IoT Hub's query language limiting which devices are imported, "
        "e.g. `tags.env = 'prod'`; omitted: every device.",
    )
    sync_interval_seconds: int = Field(
        default=300, ge=0, le=7 * 24 * 3600, description="How often devices are synced; 0: on demand only."
    )

    @model_validator(mode="after")
    def _one_credential(self) -> IotHubCreate:
        if self.auth == "sas":
            if self.connection_string is None:
                raise ValueError("auth 'sas' needs connection_string")
            if self.host_name is not None:
                raise ValueError("host_name comes from the connection string; leave it out")
        else:
            if self.host_name is None:
                raise ValueError("auth 'entra' needs host_name")
            if self.connection_string is not None:
                raise ValueError("auth 'entra' takes no connection_string")
        return self


class IotHubUpdate(StrictModel):
    """Changes to a registered hub. Fields left out stay as they are; ``sync_condition: null``
    removes the condition. A new connection string is how a rotated key reaches fleetlift: it must
    name the same hub (host) and belong to a hub registered with ``auth: sas``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "connection_string": "HostName=contoso.azure-devices.net;SharedAccessKeyName=iothubowner;"
                    "SharedAccessKey=<the regenerated key>"
                },
                {"sync_condition": None, "sync_interval_seconds": 60},
            ]
        },
    )

    name: Name | None = None
    connection_string: SecretStr | None = Field(
        default=None,
        description="The hub's connection string after its policy's key was regenerated (or another "
        "policy's). Stored sealed; never answered or logged.",
    )
    sync_condition: SyncCondition | None = Field(
        default=None, description="A new WHERE clause for the device sync; `null` removes it."
    )
    sync_interval_seconds: int | None = Field(
        default=None, ge=0, le=7 * 24 * 3600, description="How often devices are synced; 0: on demand only."
    )

    @model_validator(mode="after")
    def _something_to_change(self) -> IotHubUpdate:
        if not self.model_fields_set:
            raise ValueError(
                "name at least one of name, connection_string, sync_condition, sync_interval_seconds"
            )
        for required in ("name", "connection_string", "sync_interval_seconds"):
            if required in self.model_fields_set and getattr(self, required) is None:
                raise ValueError(f"{required} cannot be null")
        return self


class SyncSummary(BaseModel):
    """How the last device sync went."""

    at: datetime | None
    status: Literal["ok", "failed"] | None
    error: str | None = None
    counts: dict[str, int] = Field(default_factory=dict)


class IotHubRead(BaseModel):
    """A registered hub, without its key or connection string."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "hub_01JD3Q6R8W2M5E0B9N4T7K1XYZ",
                    "name": "production hub",
                    "host_name": "contoso.azure-devices.net",
                    "auth": "sas",
                    "key_name": "iothubowner",
                    "sync_condition": "tags.env = 'prod'",
                    "sync_interval_seconds": 300,
                    "last_sync": {
                        "at": "2026-11-24T09:00:00Z",
                        "status": "ok",
                        "error": None,
                        "counts": {"synced": 250, "pages": 3, "missing": 0},
                    },
                    "created_by": "alice",
                    "created_at": "2026-11-24T08:00:00Z",
                    "updated_at": "2026-11-24T08:00:00Z",
                }
            ]
        }
    )

    id: str
    name: str
    host_name: str
    auth: HubAuth
    key_name: str | None
    sync_condition: str | None
    sync_interval_seconds: int
    last_sync: SyncSummary
    created_by: str
    created_at: datetime
    updated_at: datetime


class SyncResult(BaseModel):
    """One device sync: devices imported or refreshed, pages read, and fleetlift devices of this hub
    the hub did not list (they are kept, not deleted)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"hub_id": "hub_01JD...", "synced": 250, "pages": 3, "missing": 0}]}
    )

    hub_id: str
    synced: int
    pages: int
    missing: int


class IotHubDelivery(StrictModel):
    """Deliver a deployment as an IoT Edge deployment (a hub configuration) through a registered hub.
    The release must be all container payloads, and the rollout policy the default one: the hub
    applies a configuration to every targeted device at once (phase with several deployments and
    priorities instead)."""

    hub_id: ResourceId
    layered: bool = Field(
        default=False,
        description="A layered deployment: only the modules (and their registry credentials) on top "
        "of a base deployment of higher layer.",
    )


class RevisionRead(BaseModel):
    revision: int
    configuration_id: str
    state: RevisionState
    last_error: str | None
    created_at: datetime
    applied_at: datetime | None
    retired_at: datetime | None


class IotHubDeploymentRead(BaseModel):
    """A deployment as delivered through a hub: its current configuration, the hub's counts and
    fleetlift's per-device states."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "deployment_id": "dep_01JD3Q9T1C6B2V8N4M7K5X0ABC",
                    "hub_id": "hub_01JD3Q6R8W2M5E0B9N4T7K1XYZ",
                    "revision": 1,
                    "configuration_id": "fleetlift-dep_01jd3q9t1c6b2v8n4m7k5x0abc-r1",
                    "layered": False,
                    "state": "queued",
                    "queue_position": 2,
                    "estimated_wait_seconds": 6.0,
                    "attempts": 0,
                    "next_attempt_at": None,
                    "last_error": None,
                    "last_error_code": None,
                    "hub_counts": {},
                    "device_counts": {"pending": 10},
                    "refreshed_at": None,
                    "revisions": [],
                }
            ]
        }
    )

    deployment_id: str
    hub_id: str
    revision: int
    configuration_id: str
    layered: bool
    state: RevisionState
    queue_position: int | None = Field(
        default=None,
        description="While queued: this configuration's place in the hub's queue of configuration "
        "operations (about 20 a minute per unit).",
    )
    estimated_wait_seconds: float | None = Field(default=None, description="While queued: the expected wait.")
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    last_error_code: str | None = Field(description="The hub's error code, e.g. `ThrottlingException`.")
    hub_counts: dict[str, int] = Field(
        description="From the configuration's system metrics: targeted, applied, succeeded, failed, "
        "in_progress, not_applied."
    )
    device_counts: dict[str, int] = Field(description="fleetlift's targeted devices per update state.")
    refreshed_at: datetime | None
    revisions: list[RevisionRead] = Field(description="Every revision, newest first.")


class ApplyRequest(StrictModel):
    """Apply a deployment's modules to one IoT Edge device directly (no configuration)."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"deployment_id": "dep_01JD3Q9T1C6B2V8N4M7K5X0ABC"}]}
    )

    deployment_id: ResourceId


class ApplyResult(BaseModel):
    hub_id: str
    device_id: str
    deployment_id: str
    applied: bool


class MethodTriggerRequest(StrictModel):
    """Tell devices running the fleetlift agent over IoT Hub to check for this deployment now."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"deployment_id": "dep_01JD3Q9T1C6B2V8N4M7K5X0ABC", "device_ids": ["gw-1", "gw-2"]}]
        },
    )

    deployment_id: ResourceId
    device_ids: list[DeviceId] = Field(min_length=1, max_length=1000)


class TriggerOutcome(BaseModel):
    device_id: str
    outcome: Literal["invoked", "desired_property", "failed"] = Field(
        description="`invoked`: the direct method reached the device; `desired_property`: the device "
        "was offline, so the trigger waits in its twin; `failed`: neither."
    )
    status: int | None = Field(default=None, description="The device's answer to the direct method.")
    detail: str | None = None


class MethodTriggerResult(BaseModel):
    deployment_id: str
    results: list[TriggerOutcome]
