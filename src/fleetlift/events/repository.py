"""All SQL of the event log. Events are written in the transaction that makes the change they
describe, so an event exists exactly when its change was committed."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, Select, insert, literal, select
from sqlalchemy.orm import Session

from fleetlift.events.models import Event

# Marks a session that wrote events; hooks wake live streams after its commit.
EMITTED = "fleetlift.events_emitted"


def emit(
    session: Session,
    *,
    tenant_id: str,
    type: str,
    now: datetime,
    deployment_id: str | None = None,
    device_id: str | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    """Record one event in the current transaction."""
    session.execute(
        insert(Event).values(
            tenant_id=tenant_id,
            type=type,
            deployment_id=deployment_id,
            device_id=device_id,
            data=data or {},
            created_at=now,
        )
    )
    session.info[EMITTED] = True


def emit_for_devices(
    session: Session,
    *,
    tenant_id: str,
    type: str,
    deployment_id: str,
    device_ids: Select[Any],
    data: dict[str, Any],
    now: datetime,
) -> int:
    """One event per device that ``device_ids`` (a SELECT of one column) yields, in one
    INSERT ... SELECT: a wave of 100,000 devices is one statement, not 100,000."""
    source = device_ids.subquery()
    column = next(iter(source.c))
    rows = select(
        literal(tenant_id),
        literal(type),
        literal(deployment_id),
        column,
        literal(data, type_=Event.__table__.c.data.type),
        literal(now, type_=Event.__table__.c.created_at.type),
    ).select_from(source)
    result = session.execute(
        insert(Event).from_select(
            ["tenant_id", "type", "deployment_id", "device_id", "data", "created_at"], rows
        ),
        execution_options={"preserve_rowcount": True},
    )
    session.info[EMITTED] = True
    return cast("CursorResult[Any]", result).rowcount or 0
