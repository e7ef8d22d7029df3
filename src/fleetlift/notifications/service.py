"""Use cases of device notifications, logs and inventory."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleetlift.context import Caller
from fleetlift.db import utcnow
from fleetlift.deployments import repository as deployments
from fleetlift.devices.models import Device
from fleetlift.errors import NotFound
from fleetlift.ids import new_id
from fleetlift.notifications.models import DeploymentLog, Notification
from fleetlift.pagination import Page, PageRequest, page_of

MAX_INVENTORY_KEYS = 200


def notify(*, session: Session, device: Device, level: str, message: str) -> Notification:
    """Store a device's notification; a critical one flags the device."""
    now = utcnow()
    row = Notification(
        tenant_id=device.tenant_id,
        id=new_id("ntf_"),
        device_id=device.id,
        level=level,
        message=message,
        created_at=now,
    )
    session.add(row)
    if level == "critical":
        stored = session.get(Device, (device.tenant_id, device.id))
        if stored is not None:
            stored.critical_at = now
    session.commit()
    return row


def list_notifications(
    *, session: Session, caller: Caller, device_id: str | None, level: str | None, page: PageRequest
) -> Page[Notification]:
    """Notifications newest first, fleet-wide or of one device, optionally of one level."""
    query = select(Notification).where(Notification.tenant_id == caller.tenant_id)
    if device_id is not None:
        query = query.where(Notification.device_id == device_id)
    if level is not None:
        query = query.where(Notification.level == level)
    if page.after:
        query = query.where(Notification.id < page.after[0])
    rows = session.scalars(query.order_by(Notification.id.desc()).limit(page.limit + 1)).all()
    return page_of(rows, page, lambda row: [row.id])


def upload_log(*, session: Session, device: Device, deployment_id: str, content: str) -> None:
    """Keep the log a device sends for one of its own deployments."""
    if (
        deployments.get_device_state(
            session, tenant_id=device.tenant_id, deployment_id=deployment_id, device_id=device.id
        )
        is None
    ):
        raise NotFound(f"device '{device.id}' is not part of deployment '{deployment_id}'")
    row = session.get(DeploymentLog, (device.tenant_id, deployment_id, device.id))
    if row is None:
        row = DeploymentLog(tenant_id=device.tenant_id, deployment_id=deployment_id, device_id=device.id)
        session.add(row)
    row.content = content
    row.uploaded_at = utcnow()
    session.commit()


def read_log(*, session: Session, caller: Caller, deployment_id: str, device_id: str) -> DeploymentLog:
    """The log a device uploaded for a deployment."""
    row = session.get(DeploymentLog, (caller.tenant_id, deployment_id, device_id))
    if row is None:
        raise NotFound(f"device '{device_id}' uploaded no log for deployment '{deployment_id}'")
    return row


def merge_inventory(*, session: Session, device: Device, inventory: dict[str, Any]) -> dict[str, Any]:
    """Merge what the device reports into its reported properties (a key set to null is removed)."""
    stored = session.get(Device, (device.tenant_id, device.id))
    if stored is None:
        raise NotFound("the device no longer exists")
    merged = {**stored.reported}
    for key, value in inventory.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    stored.reported = dict(list(merged.items())[:MAX_INVENTORY_KEYS])
    stored.updated_at = utcnow()
    session.commit()
    return stored.reported
