"""Input and output shapes of the release slice."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from fleetlift.api.common import Name, StrictModel

# registry/namespace/name[:tag][@sha256:hex] as the OCI distribution spec allows it.
_IMAGE_PATTERN = (
    r"^(?:[a-zA-Z0-9.\-]+(?::[0-9]+)?/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
    r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*(?::[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127})?"
    r"(?:@sha256:[a-f0-9]{64})?$"
)
ImageReference = Annotated[str, StringConstraints(min_length=1, max_length=512, pattern=_IMAGE_PATTERN)]
ModuleName = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[a-f0-9]{64}$")]


class PortMapping(StrictModel):
    container_port: int = Field(ge=1, le=65535)
    host_port: int | None = Field(default=None, ge=1, le=65535)
    protocol: Literal["tcp", "udp"] = "tcp"


class ContainerPayload(StrictModel):
    """A container the device runs, with the settings it is created with."""

    type: Literal["container"] = "container"
    name: ModuleName = Field(description="Container (IoT Edge module) name on the device.")
    image: ImageReference = Field(description="Image reference; pinned to a digest before devices see it.")
    env: dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")], str] = Field(
        default_factory=dict
    )
    ports: list[PortMapping] = Field(default_factory=list)
    create_options: dict[str, Any] = Field(
        default_factory=dict, description="Docker Engine container-create options (HostConfig, Labels, ...)."
    )
    restart_policy: Literal["always", "on-failure", "on-unhealthy", "never"] = "always"
    startup_order: int = Field(default=0, ge=0, le=4294967295)


class FilePayload(StrictModel):
    """A file the device installs: a firmware image, a code package, a bundle."""

    type: Literal["file"] = "file"
    artifact_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    filename: Annotated[str, StringConstraints(min_length=1, max_length=255)] | None = None
    sha256: Sha256 | None = None
    size: int | None = Field(default=None, ge=0)
    installer: Literal["package", "ab-slot", "script"] | None = Field(
        default=None,
        description="How the device installs it: a code package (versioned directories, symlink "
        "switch), an image for the passive A/B slot, or a script it runs. Default: ab-slot in a "
        "base release, package in a patch.",
    )
    target: ModuleName | None = Field(
        default=None,
        description="What it installs into: the package name or the slot set. Default: the release name.",
    )


Payload = Annotated[ContainerPayload | FilePayload, Field(discriminator="type")]
Compat = Annotated[
    list[Annotated[str, StringConstraints(min_length=1, max_length=100)]], Field(max_length=100)
]

_EXAMPLE: dict[str, Any] = {
    "name": "edge-stack",
    "version": "1.4.0",
    "kind": "patch",
    "payloads": [
        {
            "type": "container",
            "name": "telemetry",
            "image": "registry.example.com/acme/telemetry:1.4.0",
            "env": {"LOG_LEVEL": "info"},
            "ports": [{"container_port": 8080, "host_port": 8080}],
            "restart_policy": "always",
        }
    ],
    "device_types": ["gateway-x1"],
    "architectures": ["arm64"],
    "notes": "Faster uplink batching.",
}


class ReleaseCreate(StrictModel):
    """A new release: what to install, and which devices it fits."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_EXAMPLE]})

    name: Name
    version: Annotated[str, StringConstraints(min_length=1, max_length=100, strip_whitespace=True)]
    kind: Literal["patch", "base"] = "patch"
    payloads: list[Payload] = Field(min_length=1, max_length=50)
    device_types: Compat = Field(default_factory=list, description="Compatible device types; empty = any.")
    architectures: Compat = Field(default_factory=list, description="Compatible architectures; empty = any.")
    notes: Annotated[str, StringConstraints(max_length=10_000)] = ""


class ReleaseUpdate(StrictModel):
    """Replace the mutable fields of a release; what it installs never changes."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"device_types": ["gateway-x1"], "architectures": ["arm64"], "notes": "Fixed."}]
        },
    )

    device_types: Compat
    architectures: Compat
    notes: Annotated[str, StringConstraints(max_length=10_000)] = ""


class ValidationCheck(BaseModel):
    name: str = Field(examples=["platform"])
    subject: str = Field(examples=["registry.example.com/acme/telemetry:1.4.0 on arm64"])
    passed: bool
    detail: str = Field(examples=["runs on arm64 (linux/arm64/v8)"])


class ValidationOverride(BaseModel):
    by: str
    reason: str
    at: datetime


class Validation(BaseModel):
    """The verdict of the checks a release must pass before it can be deployed."""

    status: Literal["passed", "failed"]
    checked_at: datetime
    checks: list[ValidationCheck]
    override: ValidationOverride | None = None


class OverrideRequest(StrictModel):
    """Deploy a release that failed validation anyway; the reason is recorded and audited."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"reason": "CVE-2026-1234 does not apply: the module is not loaded"}]
        },
    )

    reason: Annotated[str, StringConstraints(min_length=10, max_length=2000, strip_whitespace=True)]


class ReleaseRead(BaseModel):
    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    **_EXAMPLE,
                    "id": "rel_01JD3Q6R8W2M5E0B9N4T7K1XYZ",
                    "payloads": [
                        {
                            **_EXAMPLE["payloads"][0],
                            "image": "registry.example.com/acme/telemetry:1.4.0@sha256:" + "9f" * 32,
                        }
                    ],
                    "validation": {
                        "status": "passed",
                        "checked_at": "2026-11-24T08:00:00Z",
                        "checks": [
                            {
                                "name": "image-resolves",
                                "subject": "registry.example.com/acme/telemetry:1.4.0",
                                "passed": True,
                                "detail": "pinned to sha256:" + "9f" * 32,
                            },
                            {
                                "name": "platform",
                                "subject": "registry.example.com/acme/telemetry:1.4.0 on arm64",
                                "passed": True,
                                "detail": "runs on arm64 (linux/arm64/v8)",
                            },
                        ],
                        "override": None,
                    },
                    "created_by": "bob",
                    "created_at": "2026-11-24T08:00:00Z",
                    "updated_at": "2026-11-24T08:00:00Z",
                }
            ]
        },
    )

    id: str
    name: str
    version: str
    kind: Literal["patch", "base"]
    payloads: list[Payload]
    device_types: list[str]
    architectures: list[str]
    notes: str
    validation: Validation
    created_by: str
    created_at: datetime
    updated_at: datetime
