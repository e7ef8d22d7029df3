"""The device table."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from fleetlift.db import Base, JsonDocument, UtcDateTime


class Device(Base):
    __tablename__ = "devices"
    __table_args__ = (Index("ix_devices_tenant_status", "tenant_id", "status"),)

    tenant_id: Mapped[str] = mapped_column(String(64), ForeignKey("tenants.id"), primary_key=True)
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    device_type: Mapped[str] = mapped_column(String(100))
    architecture: Mapped[str] = mapped_column(String(50))
    tags: Mapped[dict[str, Any]] = mapped_column(JsonDocument, default=dict)
    reported: Mapped[dict[str, Any]] = mapped_column(JsonDocument, default=dict)
    release_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str] = mapped_column(String(20))
    last_seen_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    # Admission: what the device authenticated with, and since when its tokens count.
    identity: Mapped[dict[str, Any]] = mapped_column(JsonDocument, default=dict)
    public_key: Mapped[str | None] = mapped_column(Text, nullable=True)
    key_fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    tokens_valid_after: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    # When the device last sent a critical notification: flagged in the management API.
    critical_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    row_version: Mapped[int] = mapped_column(Integer, default=1)

    __mapper_args__ = {"version_id_col": row_version}  # noqa: RUF012
