"""The event log: every state change of a deployment, a wave and a device, in commit order."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, Integer, String
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
