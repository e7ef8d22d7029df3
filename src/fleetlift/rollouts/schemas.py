"""The rollout policy a deployment carries: waves, concurrency, maintenance windows, mode,
what to do on errors, and the device timeout."""

from __future__ import annotations

from typing import Annotated, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import ConfigDict, Field, StringConstraints, field_validator, model_validator

from fleetlift.api.common import DeviceId, ResourceId, StrictModel

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
TagKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.\-]{1,128}$")]
TagValue = Annotated[str, StringConstraints(min_length=1, max_length=256)]
# A window may start at any minute of the day and end at midnight written as 24:00.
StartTime = Annotated[str, StringConstraints(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]
EndTime = Annotated[str, StringConstraints(pattern=r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$")]

MAX_SOAK_SECONDS = 30 * 24 * 3600


def _exactly_one(model: StrictModel, names: tuple[str, ...]) -> None:
    """Raise unless exactly one of the named fields is set."""
    given = [name for name in names if getattr(model, name) is not None]
    if len(given) != 1:
        listed = ", ".join(names)
        found = f"got {', '.join(given)}" if given else "got none"
        raise ValueError(f"give exactly one of {listed} ({found})")


def check_timezone(name: str) -> str:
    """Return an IANA time zone name unchanged, or raise ValueError naming it."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone '{name}'; use an IANA name such as Europe/Berlin or UTC"
        ) from None
    return name


class ErrorThreshold(StrictModel):
    """When failures halt the rollout: a share of the released devices, or a number of devices."""

    percent: float | None = Field(default=None, gt=0, le=100)
    count: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        _exactly_one(self, ("percent", "count"))
        return self


class WaveSpec(StrictModel):
    """One listed wave: which devices it takes and what it must reach before the next opens."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    device_ids: list[DeviceId] | None = Field(default=None, min_length=1, max_length=10_000)
    percent: float | None = Field(default=None, gt=0, le=100, description="Share of the whole target set.")
    count: int | None = Field(default=None, ge=1)
    tag: TagKey | None = Field(default=None, description="One wave per value of this device tag.")
    tag_values: list[TagValue] | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="The tag's values, one wave each, in this order; absent: every value present, sorted.",
    )
    success_threshold: float = Field(
        default=100, ge=0, le=100, description="Percent of the wave that must succeed before the next opens."
    )
    error_threshold: ErrorThreshold | None = None
    soak_seconds: int = Field(default=0, ge=0, le=MAX_SOAK_SECONDS)
    requires_approval: bool = Field(default=False, description="An operator approves before this wave opens.")

    @model_validator(mode="after")
    def _one_selector(self) -> Self:
        _exactly_one(self, ("device_ids", "percent", "count", "tag"))
        if self.tag_values is not None and self.tag is None:
            raise ValueError("tag_values needs tag")
        if self.tag_values is not None and len(set(self.tag_values)) != len(self.tag_values):
            raise ValueError("tag_values lists a value twice")
        if self.device_ids is not None and len(set(self.device_ids)) != len(self.device_ids):
            raise ValueError("device_ids lists a device twice")
        return self


class WeeklyWindow(StrictModel):
    """Start days and a time range; an end at or before the start runs past midnight."""

    days: list[Weekday] = Field(min_length=1, max_length=7)
    start: StartTime = Field(examples=["22:00"])
    end: EndTime = Field(examples=["04:00"])


class Maintenance(StrictModel):
    """When devices may be released: fixed windows in one time zone, or each device's own tag."""

    windows: list[WeeklyWindow] | None = Field(default=None, min_length=1, max_length=50)
    timezone: str = Field(default="UTC", description="IANA time zone of `windows`.")
    tag: TagKey | None = Field(
        default=None, description='Device tag holding window text like "mon-fri 22:00-04:00 Europe/Berlin".'
    )

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        return check_timezone(value)

    @model_validator(mode="after")
    def _one_form(self) -> Self:
        _exactly_one(self, ("windows", "tag"))
        if self.tag is not None and self.timezone != "UTC":
            raise ValueError("timezone applies to windows only; a window tag names its own time zone")
        return self


class RollbackPolicy(StrictModel):
    """What a tripped error threshold does besides halting."""

    on_error: Literal["pause", "rollback_failed", "rollback_all"] = "pause"
    release_id: ResourceId | None = Field(default=None, description="The release to roll back to.")

    @model_validator(mode="after")
    def _release_when_rolling_back(self) -> Self:
        if self.on_error != "pause" and self.release_id is None:
            raise ValueError(f"on_error '{self.on_error}' needs release_id, the release to roll back to")
        return self


class RolloutPolicy(StrictModel):
    """How a deployment reaches its devices; the empty policy releases every device at once."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "waves": [
                        {"name": "canary", "device_ids": ["gw-1", "gw-2"]},
                        {
                            "name": "10%",
                            "percent": 10,
                            "success_threshold": 95,
                            "error_threshold": {"percent": 5},
                            "soak_seconds": 600,
                        },
                        {"count": 500, "error_threshold": {"count": 10}, "requires_approval": True},
                        {"tag": "site", "tag_values": ["berlin", "paris"]},
                    ],
                    "max_concurrent": 100,
                    "maintenance": {
                        "windows": [{"days": ["mon", "tue"], "start": "22:00", "end": "04:00"}],
                        "timezone": "Europe/Berlin",
                    },
                    "mode": "soft",
                    "rollback": {"on_error": "pause"},
                    "device_timeout_seconds": 3600,
                    "dynamic": False,
                }
            ]
        },
    )

    waves: list[WaveSpec] = Field(
        default_factory=list,
        max_length=100,
        description="Empty: one wave with every device. Devices no wave takes form a last remainder wave.",
    )
    max_concurrent: int | None = Field(
        default=None, ge=1, description="Devices in flight at most; null: no limit."
    )
    maintenance: Maintenance | None = None
    mode: Literal["soft", "forced"] = "soft"
    rollback: RollbackPolicy = Field(default_factory=RollbackPolicy)
    device_timeout_seconds: int | None = Field(
        default=None, ge=60, description="A released device silent this long times out; null: never."
    )
    dynamic: bool = Field(default=False, description="Devices that match the target later join the rollout.")

    @model_validator(mode="after")
    def _devices_in_one_wave(self) -> Self:
        seen: dict[str, int] = {}
        for index, wave in enumerate(self.waves):
            for device_id in wave.device_ids or ():
                if device_id in seen:
                    raise ValueError(
                        f"device '{device_id}' is listed in wave {seen[device_id]} and wave {index}"
                    )
                seen[device_id] = index
        return self
