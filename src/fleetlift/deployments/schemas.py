"""Input and output shapes of deployments and update triggers."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from fleetlift.api.common import DeviceId, Labels, Name, ResourceId, StrictModel
from fleetlift.iothub.schemas import IotHubDelivery
from fleetlift.rollouts.schemas import RolloutPolicy

Condition = Annotated[str, StringConstraints(min_length=1, max_length=4096)]
Priority = Annotated[int, Field(ge=0, le=1_000_000, description="Higher wins where deployments overlap.")]


class Target(StrictModel):
    """Which devices a deployment is for: explicit IDs, a condition, or both (their union)."""

    device_ids: list[DeviceId] = Field(default_factory=list, max_length=10_000)
    condition: Condition | None = Field(
        default=None,
        description="Azure IoT Hub style condition, e.g. `tags.env = 'prod' AND "
        "properties.reported.arch IN ['arm64', 'armv7']`; `*` targets every device.",
    )


_EXAMPLE: dict[str, Any] = {
    "name": "edge-stack 1.4.0 to production",
    "release_id": "rel_01JD3Q6R8W2M5E0B9N4T7K1XYZ",
    "target": {"condition": "tags.env = 'prod'"},
    "priority": 10,
    "labels": {"team": "edge"},
    "status": "active",
}


class DeploymentCreate(StrictModel):
    """A new deployment. ``draft`` needs `deployments:write`; ``active`` needs `deployments:control`."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_EXAMPLE]})

    name: Name
    release_id: ResourceId
    target: Target
    priority: Priority = 0
    labels: Labels = Field(default_factory=dict)
    status: Literal["draft", "active"] = "active"
    start_at: AwareDatetime | None = Field(default=None, description="Scheduled start (UTC ISO 8601).")
    policy: RolloutPolicy = Field(
        default_factory=RolloutPolicy,
        description="How the rollout reaches the devices (waves, concurrency, maintenance windows, "
        "mode, rollback, device timeout, dynamic targeting); empty: every device at once. "
        "See docs/rollouts.md.",
    )
    iothub: IotHubDelivery | None = Field(
        default=None,
        description="Deliver through a registered Azure IoT hub as an IoT Edge deployment (a hub "
        "configuration made from the release's container payloads). See docs/iothub.md.",
    )


class DeploymentReplace(StrictModel):
    """The whole editable deployment. Release and target change only while a draft; moving
    ``status`` (draft → active, active ⇄ paused, → cancelled) needs `deployments:control`."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{**_EXAMPLE, "status": "paused"}]}
    )

    name: Name
    release_id: ResourceId
    target: Target
    priority: Priority = 0
    labels: Labels = Field(default_factory=dict)
    status: Literal["draft", "active", "paused", "cancelled"]
    start_at: AwareDatetime | None = None
    policy: RolloutPolicy | None = Field(
        default=None, description="The rollout policy; changes only while a draft. Omitted: kept as it is."
    )


DeploymentStatusName = Literal["draft", "scheduled", "active", "paused", "completed", "cancelled", "failed"]
DeviceStateName = Literal[
    "waiting",
    "pending",
    "notified",
    "downloading",
    "downloaded",
    "installing",
    "rebooting",
    "verifying",
    "succeeded",
    "failed",
    "rolled_back",
    "already_installed",
    "cancelled",
    "timed_out",
]


RolloutStateName = Literal["pending", "wave_open", "soaking", "awaiting_approval", "halted", "finished"]


class WaveRead(BaseModel):
    index: int
    name: str
    devices: int
    succeeded: int = Field(description="Succeeded or already on the release.")
    failed: int = Field(description="Failed, rolled back or timed out.")
    in_flight: int = Field(description="Released, no outcome yet.")
    waiting: int = Field(description="Not released yet.")


class RolloutRead(BaseModel):
    """Where the reconciler has taken the rollout (read-only)."""

    state: RolloutStateName
    current_wave: int = Field(description="The wave opened last (-1 while the first awaits approval).")
    wave_count: int
    soak_until: datetime | None
    approved_through: int = Field(description="The highest wave index an operator approved (-1: none).")
    halted_reason: str | None
    waves: list[WaveRead]


class DeploymentRead(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **_EXAMPLE,
                    "id": "dep_01JD3Q9T1C6B2V8N4M7K5X0ABC",
                    "target": {"device_ids": [], "condition": "tags.env = 'prod'"},
                    "start_at": None,
                    "device_counts": {"pending": 120, "installing": 3, "succeeded": 877},
                    "total_devices": 1000,
                    "policy": {},
                    "rollout": {
                        "state": "wave_open",
                        "current_wave": 0,
                        "wave_count": 1,
                        "soak_until": None,
                        "approved_through": -1,
                        "halted_reason": None,
                        "waves": [
                            {
                                "index": 0,
                                "name": "all devices",
                                "devices": 1000,
                                "succeeded": 877,
                                "failed": 0,
                                "in_flight": 123,
                                "waiting": 0,
                            }
                        ],
                    },
                    "parent_deployment_id": None,
                    "created_by": "alice",
                    "created_at": "2026-11-24T09:00:00Z",
                    "updated_at": "2026-11-24T09:00:00Z",
                }
            ]
        }
    )

    id: str
    name: str
    release_id: str
    target: Target
    priority: int
    labels: dict[str, str]
    status: DeploymentStatusName
    start_at: datetime | None
    device_counts: dict[DeviceStateName, int] = Field(description="Targeted devices per update state.")
    total_devices: int
    policy: RolloutPolicy
    rollout: RolloutRead
    parent_deployment_id: str | None = Field(
        default=None, description="For a rollback deployment: the deployment whose failures it undoes."
    )
    created_by: str
    created_at: datetime
    updated_at: datetime


class DeploymentDeviceRead(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "device_id": "gw-berlin-0001",
                    "state": "installing",
                    "detail": None,
                    "attempts": 1,
                    "wave": 0,
                    "released_at": "2026-11-24T09:01:00Z",
                    "updated_at": "2026-11-24T09:03:12Z",
                }
            ]
        }
    )

    device_id: str
    state: DeviceStateName
    detail: str | None
    attempts: int
    wave: int = 0
    released_at: datetime | None = None
    updated_at: datetime


class SingleUpdateRequest(StrictModel):
    """Update one device to a release now."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"release_id": "rel_01JD3Q6R8W2M5E0B9N4T7K1XYZ"}]}
    )

    release_id: ResourceId
    priority: Priority = 0


class SingleUpdateResult(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "deployment_id": "dep_01JD3Q9T1C6B2V8N4M7K5X0ABC",
                    "device_id": "gw-berlin-0001",
                    "release_id": "rel_01JD3Q6R8W2M5E0B9N4T7K1XYZ",
                    "state": "pending",
                }
            ]
        }
    )

    deployment_id: str
    device_id: str
    release_id: str
    state: DeviceStateName


class BatchUpdateRequest(StrictModel):
    """Update many devices to a release: by IDs, by a condition, or both."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "release_id": "rel_01JD3Q6R8W2M5E0B9N4T7K1XYZ",
                    "device_ids": ["gw-berlin-0001", "gw-berlin-0002"],
                },
                {"release_id": "rel_01JD3Q6R8W2M5E0B9N4T7K1XYZ", "condition": "tags.site = 'berlin'"},
            ]
        },
    )

    release_id: ResourceId
    device_ids: list[DeviceId] = Field(default_factory=list, max_length=10_000)
    condition: Condition | None = None
    priority: Priority = 0
    name: Name | None = None


RejectionReasonName = Literal[
    "unknown_device",
    "device_not_accepted",
    "incompatible_device_type",
    "incompatible_architecture",
    "already_on_release",
]


class BatchDeviceResult(BaseModel):
    device_id: str
    accepted: bool
    reason: RejectionReasonName | None = None
    detail: str | None = None


class BatchUpdateResult(BaseModel):
    """Per-device answers; devices matched by a condition are listed only when rejected (the
    accepted ones are in the deployment's device list)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "deployment_id": "dep_01JD3Q9T1C6B2V8N4M7K5X0ABC",
                    "accepted_count": 1,
                    "rejected_count": 1,
                    "results": [
                        {"device_id": "gw-berlin-0001", "accepted": True, "reason": None, "detail": None},
                        {
                            "device_id": "gw-lab-7",
                            "accepted": False,
                            "reason": "incompatible_architecture",
                            "detail": "architecture 'armv7' is not among the release's architectures (arm64)",
                        },
                    ],
                }
            ]
        }
    )

    deployment_id: str | None = Field(description="The deployment created for the accepted devices, if any.")
    accepted_count: int
    rejected_count: int
    results: list[BatchDeviceResult]
