"""SQL of the device protocol that belongs to no other slice: recording, in batches, when devices
were last seen."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import Table, bindparam, or_, update
from sqlalchemy.orm import Session

from fleetlift.devices.models import Device

_devices: Table = Device.__table__  # type: ignore[assignment]  # declared as FromClause
_RECORD_SEEN = (
    update(_devices)
    .where(
        _devices.c.tenant_id == bindparam("b_tenant_id"),
        _devices.c.id == bindparam("b_device_id"),
        # Another worker may have recorded the device meanwhile: then this row is left alone.
        or_(_devices.c.last_seen_at.is_(None), _devices.c.last_seen_at < bindparam("b_stale_before")),
    )
    .values(last_seen_at=bindparam("b_seen_at"))
)


def record_seen(session: Session, *, seen: Iterable[tuple[str, str, datetime, datetime]]) -> None:
    """Set ``last_seen_at`` of many devices in one executemany: each item is (tenant, device, seen
    at, stale before); a device whose stored value is newer than ``stale before`` is not rewritten.
    Does not touch the row version (the device's ETag stays)."""
    params = [
        {"b_tenant_id": tenant_id, "b_device_id": device_id, "b_seen_at": at, "b_stale_before": before}
        for tenant_id, device_id, at, before in seen
    ]
    if params:
        session.connection().execute(_RECORD_SEEN, params)
