"""All SQL of the device slice."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import Session

from fleetlift.devices.models import Device
from fleetlift.pagination import PageRequest
from fleetlift.targeting import Condition, condition_to_sql


@dataclass(frozen=True)
class DeviceFilter:
    status: str | None = None
    device_type: str | None = None
    condition: Condition | None = None


def condition_clause(session: Session, condition: Condition) -> ColumnElement[bool]:
    """The SQL form of a target condition over the device table, for this session's dialect."""
    return condition_to_sql(
        condition,
        device_id=Device.id,
        tags=Device.tags,
        reported=Device.reported,
        dialect=session.get_bind().dialect.name,
    )


def get(session: Session, *, tenant_id: str, device_id: str) -> Device | None:
    return session.get(Device, (tenant_id, device_id))


def get_many(session: Session, *, tenant_id: str, device_ids: Iterable[str]) -> dict[str, Device]:
    """The devices among ``device_ids`` that exist, by ID."""
    ids = list(dict.fromkeys(device_ids))
    found: dict[str, Device] = {}
    for start in range(0, len(ids), 900):  # stay under SQLite's bound-parameter limit
        chunk = ids[start : start + 900]
        for device in session.scalars(
            select(Device).where(Device.tenant_id == tenant_id, Device.id.in_(chunk))
        ):
            found[device.id] = device
    return found


def touch(session: Session, *, tenant_id: str, device_id: str, now: datetime) -> None:
    """Record that a device was seen, without bumping its row version (its ETag stays)."""
    session.execute(
        update(Device).where(Device.tenant_id == tenant_id, Device.id == device_id).values(last_seen_at=now),
        execution_options={"synchronize_session": False},
    )


def add(session: Session, device: Device) -> None:
    session.add(device)


def delete(session: Session, device: Device) -> None:
    session.delete(device)


def list_devices(
    session: Session, *, tenant_id: str, filters: DeviceFilter, page: PageRequest
) -> Sequence[Device]:
    """Devices by ID, one row more than the page."""
    query = select(Device).where(Device.tenant_id == tenant_id)
    if filters.status is not None:
        query = query.where(Device.status == filters.status)
    if filters.device_type is not None:
        query = query.where(Device.device_type == filters.device_type)
    if filters.condition is not None:
        query = query.where(condition_clause(session, filters.condition))
    if page.after:
        query = query.where(Device.id > page.after[0])
    query = query.order_by(Device.id).limit(page.limit + 1)
    return session.scalars(query).all()
