"""The event log: every state change of a deployment, a wave and a device, in commit order; and
the webhook subscriptions that receive it, with their delivery log."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from fleetlift.db import Base, JsonDocument, UtcDateTime

# SQLite only numbers rows itself for an INTEGER PRIMARY KEY.
Sequence64 = BigInteger().with_variant(Integer(), "sqlite")


class Event(Base):
    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_tenant_seq", "tenant_id", "seq"),
        Index("ix_events_created", "created_at"),
    )

    # A growing number: SSE clients resume after the last one they saw (``Last-Event-ID``) and
    # webhook dispatch keeps a cursor on it.
    seq: Mapped[int] = mapped_column(Sequence64, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(64))
    deployment_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    device_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    data: Mapped[dict[str, object]] = mapped_column(JsonDocument)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class WebhookSubscription(Base):
    """Where to POST events of a tenant, which ones, and how far fan-out has come."""

    __tablename__ = "webhook_subscriptions"

    tenant_id: Mapped[str] = mapped_column(String(64), ForeignKey("tenants.id"), primary_key=True)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    url: Mapped[str] = mapped_column(String(2048))
    description: Mapped[str] = mapped_column(String(500), default="")
    # Type names or prefixes ("deployment.*"); empty: every event.
    event_types: Mapped[list[str]] = mapped_column(JsonDocument, default=list)
    # The signing secret, sealed with the server's secrets key (never stored or answered in clear).
    secret_encrypted: Mapped[str] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # The highest event seq whose deliveries were created; written with plain SQL (not the ORM),
    # so dispatch does not change the subscription's ETag.
    cursor_seq: Mapped[int] = mapped_column(Sequence64, default=0)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    row_version: Mapped[int] = mapped_column(Integer, default=1)

    __mapper_args__ = {"version_id_col": row_version}  # noqa: RUF012


class WebhookDelivery(Base):
    """One event on its way to one subscription: attempts, outcome, when to try again."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_subscription", "tenant_id", "subscription_id", "id"),
    )

    tenant_id: Mapped[str] = mapped_column(String(64), ForeignKey("tenants.id"), primary_key=True)
    # "whd_<event seq, 12 digits>_<subscription>": unique per (subscription, event) by construction,
    # so fanning out the same event twice fails instead of delivering twice; sorts by event.
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    subscription_id: Mapped[str] = mapped_column(String(64))
    event_seq: Mapped[int] = mapped_column(Sequence64)
    event_type: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
