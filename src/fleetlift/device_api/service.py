"""Use cases of the device protocol: authenticate a device, and know which device a token is.
The poll for the next update, the request devices send most, has a module of its own (``poll``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from fleetlift.db import utcnow
from fleetlift.deployments import service as deployments
from fleetlift.deployments.rules import DeviceUpdateState
from fleetlift.device_api.identity import (
    device_id_for,
    key_fingerprint,
    load_device_key,
    verify_request_signature,
)
from fleetlift.device_api.rules import token_refusal
from fleetlift.device_api.tokens import DeviceTokens
from fleetlift.devices import repository as devices
from fleetlift.devices.models import Device
from fleetlift.devices.rules import DeviceStatus
from fleetlift.enrollment import service as enrollment
from fleetlift.errors import Unauthenticated
from fleetlift.tenants.models import Tenant


class NotAdmitted(Unauthenticated):
    """The device is known but may not get a token (yet)."""

    type_slug = "device-not-admitted"
    title = "Device not admitted"


@dataclass(frozen=True)
class AuthRequest:
    identity: dict[str, Any]
    public_key: str
    device_type: str
    architecture: str
    tenant_id: str
    enrollment_token: str | None = None


@dataclass(frozen=True)
class Admitted:
    device_id: str
    token: str
    expires_at: datetime


def authenticate(
    *, session: Session, tokens: DeviceTokens, request: AuthRequest, body: bytes, signature: str | None
) -> Admitted:
    """Check the request is signed by the key it carries; a new device is recorded as pending, an
    accepted one with that key gets a short-lived token."""
    key = load_device_key(request.public_key)
    verify_request_signature(key, body, signature)
    if session.get(Tenant, request.tenant_id) is None:
        raise Unauthenticated("unknown tenant")
    device_id = device_id_for(request.identity)
    fingerprint = key_fingerprint(key)
    now = utcnow()
    device = devices.get(session, tenant_id=request.tenant_id, device_id=device_id)
    enrolled = None
    unadmitted = device is None or (
        device.status == DeviceStatus.PENDING.value and device.key_fingerprint == fingerprint
    )
    if request.enrollment_token is not None and unadmitted:
        enrolled = enrollment.redeem(
            session, tenant_id=request.tenant_id, token=request.enrollment_token, now=now
        )
        if enrolled is None:
            raise Unauthenticated("the enrollment token is invalid, expired, revoked or used up")
    if device is None and enrolled is not None:
        device = Device(
            tenant_id=request.tenant_id,
            id=device_id,
            name=device_id,
            device_type=request.device_type,
            architecture=request.architecture,
            tags=dict(enrolled.tags),
            reported={},
            status=DeviceStatus.ACCEPTED.value,
            identity=request.identity,
            public_key=request.public_key,
            key_fingerprint=fingerprint,
            created_at=now,
            updated_at=now,
        )
        devices.add(session, device)
        session.flush()
    elif device is not None and enrolled is not None and device.key_fingerprint == fingerprint:
        device.status = DeviceStatus.ACCEPTED.value
        device.tags = {**dict(enrolled.tags), **device.tags}
        device.updated_at = now
    if device is None:
        devices.add(
            session,
            Device(
                tenant_id=request.tenant_id,
                id=device_id,
                name=device_id,
                device_type=request.device_type,
                architecture=request.architecture,
                tags={},
                reported={},
                status=DeviceStatus.PENDING.value,
                identity=request.identity,
                public_key=request.public_key,
                key_fingerprint=fingerprint,
                last_seen_at=now,
                created_at=now,
                updated_at=now,
            ),
        )
        session.commit()
        raise NotAdmitted(
            "the device is pending admission by an operator",
            extra={"device_id": device_id, "admission": "pending"},
        )
    if device.key_fingerprint != fingerprint:
        if device.status == DeviceStatus.PENDING.value or device.key_fingerprint is None:
            # Not admitted yet: the newest key is the one an operator will accept.
            device.public_key, device.key_fingerprint, device.identity = (
                request.public_key,
                fingerprint,
                request.identity,
            )
            device.updated_at = now
            session.commit()
        else:
            raise NotAdmitted(
                "this identity is admitted with another key",
                extra={"device_id": device_id, "admission": device.status},
            )
    devices.touch(session, tenant_id=request.tenant_id, device_id=device_id, now=now)
    session.commit()
    if device.status != DeviceStatus.ACCEPTED.value:
        raise NotAdmitted(
            f"the device is {device.status}", extra={"device_id": device_id, "admission": device.status}
        )
    token, expires_at = tokens.issue(tenant_id=request.tenant_id, device_id=device_id, now=now)
    return Admitted(device_id, token, expires_at)


def device_of_token(*, session: Session, tokens: DeviceTokens, token: str) -> Device:
    """The accepted device a token speaks for; revoked, rejected or decommissioned is a 401."""
    claims = tokens.verify(token)
    device = devices.get(session, tenant_id=claims.tenant_id, device_id=claims.device_id)
    refusal = token_refusal(
        None if device is None else device.status,
        None if device is None else device.tokens_valid_after,
        claims.issued_at,
    )
    if refusal is not None or device is None:
        raise Unauthenticated(refusal or "the device is no longer admitted")
    return device


def report_status(
    *, session: Session, device: Device, deployment_id: str, state: DeviceUpdateState, detail: str | None
) -> DeviceUpdateState:
    """A device's progress report on its own deployment; duplicates and late reports are harmless."""
    return deployments.record_device_report(
        session=session,
        tenant_id=device.tenant_id,
        deployment_id=deployment_id,
        device_id=device.id,
        state=state,
        detail=detail,
    )
