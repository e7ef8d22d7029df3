"""The release table."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from fleetlift.db import Base, JsonDocument, UtcDateTime


class Release(Base):
    __tablename__ = "releases"
    __table_args__ = (UniqueConstraint("tenant_id", "name", "version", name="uq_releases_name_version"),)

    tenant_id: Mapped[str] = mapped_column(String(64), ForeignKey("tenants.id"), primary_key=True)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(10))
    payloads: Mapped[list[dict[str, Any]]] = mapped_column(JsonDocument)
    device_types: Mapped[list[str]] = mapped_column(JsonDocument)
    architectures: Mapped[list[str]] = mapped_column(JsonDocument)
    notes: Mapped[str] = mapped_column(Text, default="")
    # The verdict of the checks a release must pass before it is deployed (see releases.rules).
    validation: Mapped[dict[str, Any]] = mapped_column(JsonDocument, default=dict)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    row_version: Mapped[int] = mapped_column(Integer, default=1)

    __mapper_args__ = {"version_id_col": row_version}  # noqa: RUF012
