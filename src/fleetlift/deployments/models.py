"""The deployment table and the per-device state of each deployment."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from fleetlift.db import Base, JsonDocument, UtcDateTime


class Deployment(Base):
    __tablename__ = "deployments"
    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "release_id"], ["releases.tenant_id", "releases.id"], name="fk_deployments_release"
        ),
        Index("ix_deployments_tenant_release", "tenant_id", "release_id"),
    )

    tenant_id: Mapped[str] = mapped_column(String(64), ForeignKey("tenants.id"), primary_key=True)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    release_id: Mapped[str] = mapped_column(String(64))
    target_device_ids: Mapped[list[str]] = mapped_column(JsonDocument)
    target_condition: Mapped[str | None] = mapped_column(Text, nullable=True)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    labels: Mapped[dict[str, str]] = mapped_column(JsonDocument)
    # The operator's intent (draft, active, paused, cancelled); the status users see is derived
    # from it together with the per-device states.
    phase: Mapped[str] = mapped_column(String(20))
    start_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    # Deleted deployments are kept (hidden) so the per-device history they own is never lost.
    deleted_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    row_version: Mapped[int] = mapped_column(Integer, default=1)

    # The rollout: the operator's policy (``rollouts.schemas.RolloutPolicy`` as JSON) and where the
    # reconciler has taken it. ``rollout_state`` is one of ``rollouts.rules.RolloutState``.
    policy: Mapped[dict[str, object]] = mapped_column(JsonDocument, default=dict, server_default=text("'{}'"))
    rollout_state: Mapped[str] = mapped_column(String(24), default="pending", server_default="pending")
    current_wave: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    wave_count: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    wave_opened_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    soak_until: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    # The highest wave index whose approval gate an operator opened (-1: none).
    approved_through: Mapped[int] = mapped_column(Integer, default=-1, server_default="-1")
    halted_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # A rollback deployment names the deployment whose failures it undoes.
    parent_deployment_id: Mapped[str | None] = mapped_column(String(64), nullable=True)

    __mapper_args__ = {"version_id_col": row_version}  # noqa: RUF012


class DeploymentDevice(Base):
    __tablename__ = "deployment_devices"
    __table_args__ = (
        # No foreign key to deployments: its per-row check doubled the time to assign a
        # million devices (docs/benchmarks.md). Rows are only written by assign_devices for a
        # deployment in the same transaction, and deployments are never deleted, only hidden.
        Index("ix_deployment_devices_device", "tenant_id", "device_id"),
        Index("ix_deployment_devices_state", "tenant_id", "deployment_id", "state"),
        Index("ix_deployment_devices_wave", "tenant_id", "deployment_id", "wave", "state"),
    )

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    deployment_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    state: Mapped[str] = mapped_column(String(20))
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The wave the device belongs to, and when its wave let it start (it left ``waiting``).
    wave: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    released_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, server_default=func.now())


__all__ = ["Deployment", "DeploymentDevice"]
