"""Shapes of events and webhooks: a webhook's secret goes in (or is made) and comes out once."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, SecretStr, StringConstraints, field_validator

from fleetlift.api.common import StrictModel
from fleetlift.events.rules import TYPE_PATTERN

DeliveryStatus = Literal["pending", "delivered", "failed"]
TypePattern = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=TYPE_PATTERN)]

_EVENT_EXAMPLE: dict[str, Any] = {
    "seq": 4211,
    "type": "deployment.wave_opened",
    "deployment_id": "dep_01JD3Q9T1C6B2V8N4M7K5X0ABC",
    "device_id": None,
    "data": {"wave": 1, "devices": 120},
    "created_at": "2026-11-24T09:00:00Z",
}


class EventRead(BaseModel):
    """One entry of the event log."""

    model_config = ConfigDict(from_attributes=True, json_schema_extra={"examples": [_EVENT_EXAMPLE]})

    seq: int = Field(description="Position in the log; SSE clients resume after it (`Last-Event-ID`).")
    type: str
    deployment_id: str | None
    device_id: str | None
    data: dict[str, Any]
    created_at: datetime


class EventPage(BaseModel):
    """A page of events, oldest first; pass `next_cursor` back as `cursor` (or the last `seq` as
    `after`) for the next one."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"items": [_EVENT_EXAMPLE], "next_cursor": None}]}
    )

    items: list[EventRead]
    next_cursor: str | None = Field(description="Cursor of the next page; null on the last page.")


class _WebhookFields(StrictModel):
    url: AnyHttpUrl = Field(description="Where events are POSTed (http or https).")
    description: Annotated[str, StringConstraints(max_length=500)] = ""
    event_types: list[TypePattern] = Field(
        default_factory=list,
        max_length=50,
        description='Type names or prefixes ("deployment.*"); empty: every event.',
    )
    active: bool = True

    @field_validator("url")
    @classmethod
    def _short_enough(cls, value: AnyHttpUrl) -> AnyHttpUrl:
        if len(str(value)) > 2048:
            raise ValueError("the URL is longer than 2048 characters")
        return value


class WebhookCreate(_WebhookFields):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "url": "https://hooks.example.com/fleetlift",
                    "description": "rollout alerts to the on-call channel",
                    "event_types": ["deployment.*"],
                    "active": True,
                }
            ]
        },
    )

    secret: SecretStr | None = Field(
        default=None,
        description="The HMAC key receivers verify signatures with (16 to 200 characters); made "
        "for you when omitted. Answered only in this response.",
    )

    @field_validator("secret")
    @classmethod
    def _secret_length(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not 16 <= len(value.get_secret_value()) <= 200:
            raise ValueError("the secret must have 16 to 200 characters")
        return value


class WebhookReplace(WebhookCreate):
    """A whole subscription; the secret is kept when omitted, replaced when given."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "url": "https://hooks.example.com/fleetlift",
                    "description": "rollout alerts",
                    "event_types": ["deployment.halted", "deployment.completed"],
                    "active": False,
                }
            ]
        },
    )


class WebhookRead(BaseModel):
    """A subscription, without its secret."""

    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "id": "whk_01JD3QB2W4X6Y8Z0A2C4E6G8J0",
                    "url": "https://hooks.example.com/fleetlift",
                    "description": "rollout alerts",
                    "event_types": ["deployment.*"],
                    "active": True,
                    "created_by": "alice",
                    "created_at": "2026-11-24T09:00:00Z",
                    "updated_at": "2026-11-24T09:00:00Z",
                }
            ]
        },
    )

    id: str
    url: str
    description: str
    event_types: list[str]
    active: bool
    created_by: str
    created_at: datetime
    updated_at: datetime


class WebhookCreated(WebhookRead):
    secret: str = Field(description="Shown only now: keep it to verify `X-Fleetlift-Signature`.")


class DeliveryRead(BaseModel):
    """One event on its way to one webhook."""

    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "id": "whd_000000004211_01JD3QB2W4X6Y8Z0A2C4E6G8J0",
                    "event_seq": 4211,
                    "event_type": "deployment.wave_opened",
                    "status": "pending",
                    "attempts": 2,
                    "last_status_code": 503,
                    "last_error": "HTTP 503",
                    "next_attempt_at": "2026-11-24T09:00:40Z",
                    "delivered_at": None,
                    "created_at": "2026-11-24T09:00:00Z",
                }
            ]
        },
    )

    id: str
    event_seq: int
    event_type: str
    status: DeliveryStatus
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    created_at: datetime


class PingQueued(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"delivery_id": "whd_000000004212_01JD3QB2W4X6Y8Z0A2C4E6G8J0", "event_seq": 4212}]
        }
    )

    delivery_id: str
    event_seq: int
