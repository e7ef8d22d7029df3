"""Azure IoT hubs a tenant delivers through, and the hub configurations that carry its edge deployments."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from fleetlift.db import Base, JsonDocument, UtcDateTime


class IotHub(Base):
    """One IoT hub: how to reach it (the connection string sealed) and how its devices are synced."""

    __tablename__ = "iothub_hubs"
    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_iothub_hubs_name"),)

    tenant_id: Mapped[str] = mapped_column(String(64), ForeignKey("tenants.id"), primary_key=True)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    host_name: Mapped[str] = mapped_column(String(255))
    auth: Mapped[str] = mapped_column(String(16))  # "sas" | "entra"
    key_name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # The whole connection string, sealed with the server's secrets key; never answered or logged.
    sealed_connection_string: Mapped[str | None] = mapped_column(Text, nullable=True)
    sync_condition: Mapped[str | None] = mapped_column(Text, nullable=True)
    sync_interval_seconds: Mapped[int] = mapped_column(Integer)
    # Written by the worker with plain SQL (not the ORM), so syncing never changes the hub's ETag.
    last_sync_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    last_sync_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    last_sync_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_sync_counts: Mapped[dict[str, Any]] = mapped_column(JsonDocument, default=dict)
    # A replica works on a hub only while it holds this lease (claimed with a conditional UPDATE).
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    row_version: Mapped[int] = mapped_column(Integer, default=1)

    __mapper_args__ = {"version_id_col": row_version}  # noqa: RUF012


class IotHubConfiguration(Base):
    """One revision of a fleetlift deployment as a hub configuration (content is immutable in the
    hub, so a changed deployment is a new revision and the old one is retired)."""

    __tablename__ = "iothub_configurations"
    __table_args__ = (
        UniqueConstraint("tenant_id", "hub_id", "configuration_id", name="uq_iothub_configurations_id"),
        Index("ix_iothub_configurations_hub_state", "tenant_id", "hub_id", "state"),
    )

    tenant_id: Mapped[str] = mapped_column(String(64), ForeignKey("tenants.id"), primary_key=True)
    deployment_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    revision: Mapped[int] = mapped_column(Integer, primary_key=True)
    hub_id: Mapped[str] = mapped_column(String(64))
    configuration_id: Mapped[str] = mapped_column(String(128))
    layered: Mapped[bool] = mapped_column(Boolean, default=False)
    # queued -> applied -> retiring -> retired; or failed (with last_error).
    state: Mapped[str] = mapped_column(String(16))
    # A digest of what the configuration is made of (release, target, priority, labels, layering,
    # credentials excluded): a deployment whose digest moves gets a new revision.
    spec_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    hub_etag: Mapped[str | None] = mapped_column(String(128), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    hub_counts: Mapped[dict[str, Any]] = mapped_column(JsonDocument, default=dict)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    applied_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    retired_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    refreshed_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


__all__ = ["IotHub", "IotHubConfiguration"]
