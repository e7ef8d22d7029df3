"""Use cases of devices."""

from __future__ import annotations

from sqlalchemy.orm import Session

from fleetlift.audit import service as audit
from fleetlift.context import Caller
from fleetlift.db import utcnow
from fleetlift.device_api.identity import device_id_for, key_fingerprint, load_device_key
from fleetlift.devices import repository
from fleetlift.devices.models import Device
from fleetlift.devices.repository import DeviceFilter
from fleetlift.devices.rules import AdmissionEvent, DeviceStatus, admission_transition
from fleetlift.devices.schemas import DeviceCreate, DevicePreauthorize, DeviceUpdate
from fleetlift.errors import Conflict, FieldError, InvalidInput, NotFound
from fleetlift.etags import check_if_match
from fleetlift.ids import new_id
from fleetlift.pagination import Page, PageRequest, page_of
from fleetlift.releases import repository as releases


def get(*, session: Session, caller: Caller, device_id: str) -> Device:
    """One device of the caller's tenant."""
    device = repository.get(session, tenant_id=caller.tenant_id, device_id=device_id)
    if device is None:
        raise NotFound(f"no device '{device_id}' in this tenant")
    return device


def list_devices(
    *, session: Session, caller: Caller, filters: DeviceFilter, page: PageRequest
) -> Page[Device]:
    """Devices ordered by ID, filtered by status, type, tags and a target condition."""
    rows = repository.list_devices(session, tenant_id=caller.tenant_id, filters=filters, page=page)
    return page_of(rows, page, lambda device: [device.id])


def register(*, session: Session, caller: Caller, data: DeviceCreate) -> Device:
    """Register a device; its ID is unique within the tenant."""
    device_id = data.id or new_id("dev_")
    if repository.get(session, tenant_id=caller.tenant_id, device_id=device_id) is not None:
        raise Conflict(f"a device with ID '{device_id}' already exists")
    if (
        data.release_id is not None
        and releases.get(session, tenant_id=caller.tenant_id, release_id=data.release_id) is None
    ):
        raise InvalidInput(
            f"no release '{data.release_id}' in this tenant",
            errors=[FieldError("body.release_id", "unknown release")],
        )
    now = utcnow()
    device = Device(
        tenant_id=caller.tenant_id,
        id=device_id,
        name=data.name or device_id,
        device_type=data.device_type,
        architecture=data.architecture,
        tags=data.tags,
        reported=data.reported,
        release_id=data.release_id,
        status=data.status,
        last_seen_at=None,
        created_at=now,
        updated_at=now,
    )
    repository.add(session, device)
    audit.record(
        session,
        caller=caller,
        action="devices.register",
        resource_type="device",
        resource_id=device_id,
        status_code=201,
    )
    session.commit()
    return device


def update(
    *, session: Session, caller: Caller, device_id: str, data: DeviceUpdate, if_match: str | None
) -> Device:
    """Replace a device's name and tags."""
    device = get(session=session, caller=caller, device_id=device_id)
    check_if_match(if_match, device.row_version)
    device.name = data.name
    device.tags = data.tags
    device.updated_at = utcnow()
    audit.record(
        session, caller=caller, action="devices.update", resource_type="device", resource_id=device_id
    )
    session.commit()
    return device


def delete(*, session: Session, caller: Caller, device_id: str, if_match: str | None) -> None:
    """Remove a device; the deployments it was part of keep its per-device history."""
    device = get(session=session, caller=caller, device_id=device_id)
    check_if_match(if_match, device.row_version)
    repository.delete(session, device)
    audit.record(
        session,
        caller=caller,
        action="devices.delete",
        resource_type="device",
        resource_id=device_id,
        status_code=204,
    )
    session.commit()


def admit(*, session: Session, caller: Caller, device_id: str, event: AdmissionEvent) -> Device:
    """Accept, reject or decommission a device; rejecting or decommissioning revokes its tokens."""
    device = get(session=session, caller=caller, device_id=device_id)
    device.status = admission_transition(DeviceStatus(device.status), event).value
    now = utcnow()
    device.updated_at = now
    if event is not AdmissionEvent.ACCEPT:
        device.tokens_valid_after = now  # every token issued before now stops working at once
    audit.record(
        session, caller=caller, action=f"devices.{event.value}", resource_type="device", resource_id=device_id
    )
    session.commit()
    return device


def preauthorize(*, session: Session, caller: Caller, data: DevicePreauthorize) -> Device:
    """Admit an identity and key before the device ever connects: its first request gets a token."""
    key = load_device_key(data.public_key)
    device_id = device_id_for(data.identity)
    if repository.get(session, tenant_id=caller.tenant_id, device_id=device_id) is not None:
        raise Conflict(f"a device with ID '{device_id}' already exists")
    now = utcnow()
    device = Device(
        tenant_id=caller.tenant_id,
        id=device_id,
        name=data.name or device_id,
        device_type=data.device_type,
        architecture=data.architecture,
        tags=data.tags,
        reported={},
        status=DeviceStatus.ACCEPTED.value,
        identity=data.identity,
        public_key=data.public_key,
        key_fingerprint=key_fingerprint(key),
        created_at=now,
        updated_at=now,
    )
    repository.add(session, device)
    audit.record(
        session,
        caller=caller,
        action="devices.preauthorize",
        resource_type="device",
        resource_id=device_id,
        status_code=201,
    )
    session.commit()
    return device
