"""HTTP routes of the device slice."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from fleetlift.api.common import Page
from fleetlift.api.deps import AuditIntent, IfMatch, PageDep, SessionDep, permit
from fleetlift.api.docs import operation
from fleetlift.api.filters import parse_key_values
from fleetlift.auth import Permission
from fleetlift.context import Caller
from fleetlift.deployments import service as deployments
from fleetlift.devices import service
from fleetlift.devices.repository import DeviceFilter
from fleetlift.devices.rules import AdmissionEvent, combined_condition
from fleetlift.devices.schemas import (
    DeviceCreate,
    DeviceDeploymentRead,
    DevicePreauthorize,
    DeviceRead,
    DeviceUpdate,
)
from fleetlift.etags import etag_of

router = APIRouter(prefix="/devices", tags=["devices"])

Reader = Annotated[Caller, permit(Permission.DEVICES_READ)]


def _intent(action: str) -> AuditIntent:
    return AuditIntent(action=action, resource_type="device", resource_param="device_id")


@router.get(
    "",
    response_model=Page[DeviceRead],
    **operation(
        Permission.DEVICES_READ,
        summary="List devices",
        description="Devices ordered by ID. Filter by admission `status`, `device_type`, `tag` "
        "(`key:value`, repeatable, string values) and an IoT Hub style target `condition`.",
        errors=(400,),
    ),
)
def list_devices(
    session: SessionDep,
    caller: Reader,
    page: PageDep,
    status: Annotated[str | None, Query(pattern="^(pending|accepted|rejected|decommissioned)$")] = None,
    device_type: Annotated[str | None, Query(max_length=200)] = None,
    tag: Annotated[list[str] | None, Query(max_length=20, description="`key:value`; repeat to AND.")] = None,
    condition: Annotated[str | None, Query(max_length=4096, examples=["tags.env = 'prod'"])] = None,
) -> Page[DeviceRead]:
    filters = DeviceFilter(
        status=status,
        device_type=device_type,
        condition=combined_condition(condition, parse_key_values(tag or [], parameter="tag")),
    )
    result = service.list_devices(session=session, caller=caller, filters=filters, page=page)
    return Page(items=[DeviceRead.model_validate(d) for d in result.items], next_cursor=result.next_cursor)


@router.post(
    "",
    status_code=201,
    response_model=DeviceRead,
    **operation(
        Permission.DEVICES_WRITE,
        summary="Register a device",
        description="Registers a device ahead of it connecting. The ID is yours (IoT Hub device-ID "
        "rules) or generated. A device registered here is accepted unless `status` says `pending`.",
        errors=(400, 409, 413, 415),
    ),
)
def register_device(
    data: DeviceCreate,
    session: SessionDep,
    response: Response,
    caller: Annotated[Caller, permit(Permission.DEVICES_WRITE, audit=_intent("devices.register"))],
) -> DeviceRead:
    device = service.register(session=session, caller=caller, data=data)
    response.headers["ETag"] = etag_of(device.row_version)
    response.headers["Location"] = f"/api/v1/devices/{device.id}"
    return DeviceRead.model_validate(device)


@router.post(
    "/preauthorize",
    status_code=201,
    response_model=DeviceRead,
    **operation(
        Permission.DEVICES_ADMIT,
        summary="Preauthorize a device",
        description="Admits an identity and public key before the device first connects (a factory "
        "batch): its first signed authentication request receives a device token.",
        errors=(400, 409, 413, 415),
    ),
)
def preauthorize_device(
    data: DevicePreauthorize,
    session: SessionDep,
    caller: Annotated[Caller, permit(Permission.DEVICES_ADMIT, audit=_intent("devices.preauthorize"))],
) -> DeviceRead:
    return DeviceRead.model_validate(service.preauthorize(session=session, caller=caller, data=data))


@router.get(
    "/{device_id}",
    response_model=DeviceRead,
    **operation(Permission.DEVICES_READ, summary="Get a device", description="One device.", errors=(404,)),
)
def get_device(device_id: str, session: SessionDep, caller: Reader, response: Response) -> DeviceRead:
    device = service.get(session=session, caller=caller, device_id=device_id)
    response.headers["ETag"] = etag_of(device.row_version)
    return DeviceRead.model_validate(device)


@router.put(
    "/{device_id}",
    response_model=DeviceRead,
    **operation(
        Permission.DEVICES_WRITE,
        summary="Update a device's name and tags",
        description="Replaces the device's name and tags (tags are replaced whole, as a twin's tags "
        "are). Honors `If-Match`.",
        errors=(400, 404, 412, 413, 415),
    ),
)
def update_device(
    device_id: str,
    data: DeviceUpdate,
    session: SessionDep,
    response: Response,
    caller: Annotated[Caller, permit(Permission.DEVICES_WRITE, audit=_intent("devices.update"))],
    if_match: IfMatch = None,
) -> DeviceRead:
    device = service.update(session=session, caller=caller, device_id=device_id, data=data, if_match=if_match)
    response.headers["ETag"] = etag_of(device.row_version)
    return DeviceRead.model_validate(device)


@router.delete(
    "/{device_id}",
    status_code=204,
    response_class=Response,
    **operation(
        Permission.DEVICES_WRITE,
        summary="Delete a device",
        description="Removes the device. Deployments it took part in keep its per-device history. "
        "Honors `If-Match`.",
        errors=(404, 412),
    ),
)
def delete_device(
    device_id: str,
    session: SessionDep,
    caller: Annotated[Caller, permit(Permission.DEVICES_WRITE, audit=_intent("devices.delete"))],
    if_match: IfMatch = None,
) -> Response:
    service.delete(session=session, caller=caller, device_id=device_id, if_match=if_match)
    return Response(status_code=204)


@router.get(
    "/{device_id}/deployments",
    response_model=list[DeviceDeploymentRead],
    **operation(
        Permission.DEPLOYMENTS_READ,
        summary="A device's deployment history",
        description="Every deployment that targeted the device, newest first, deleted ones "
        "included, with the device's state in each; `effective` marks the deployment the device "
        "follows now (highest priority, newest among equals).",
        errors=(404,),
    ),
)
def device_deployments(
    device_id: str, session: SessionDep, caller: Annotated[Caller, permit(Permission.DEPLOYMENTS_READ)]
) -> list[DeviceDeploymentRead]:
    rows = deployments.device_deployments(session=session, caller=caller, device_id=device_id)
    return [
        DeviceDeploymentRead(
            deployment_id=deployment.id,
            deployment_name=deployment.name,
            release_id=deployment.release_id,
            priority=deployment.priority,
            state=state.state,
            detail=state.detail,
            updated_at=state.updated_at,
            deleted=deployment.deleted_at is not None,
            effective=effective,
        )
        for state, deployment, effective in rows
    ]


def _admission_operation(event: AdmissionEvent, summary: str, description: str) -> dict[str, Any]:
    return {
        "path": f"/{{device_id}}/{event.value}",
        "response_model": DeviceRead,
        **operation(Permission.DEVICES_ADMIT, summary=summary, description=description, errors=(404, 409)),
    }


@router.post(
    **_admission_operation(
        AdmissionEvent.ACCEPT,
        "Accept a device",
        "Admits a pending (or rejected) device: its next authentication request gets a device token.",
    )
)
def accept_device(
    device_id: str,
    session: SessionDep,
    caller: Annotated[Caller, permit(Permission.DEVICES_ADMIT, audit=_intent("devices.accept"))],
) -> DeviceRead:
    device = service.admit(session=session, caller=caller, device_id=device_id, event=AdmissionEvent.ACCEPT)
    return DeviceRead.model_validate(device)


@router.post(
    **_admission_operation(
        AdmissionEvent.REJECT, "Reject a device", "Refuses a device; its device tokens stop working at once."
    )
)
def reject_device(
    device_id: str,
    session: SessionDep,
    caller: Annotated[Caller, permit(Permission.DEVICES_ADMIT, audit=_intent("devices.reject"))],
) -> DeviceRead:
    device = service.admit(session=session, caller=caller, device_id=device_id, event=AdmissionEvent.REJECT)
    return DeviceRead.model_validate(device)


@router.post(
    **_admission_operation(
        AdmissionEvent.DECOMMISSION,
        "Decommission a device",
        "Retires a device for good; its device tokens stop working at once.",
    )
)
def decommission_device(
    device_id: str,
    session: SessionDep,
    caller: Annotated[Caller, permit(Permission.DEVICES_ADMIT, audit=_intent("devices.decommission"))],
) -> DeviceRead:
    device = service.admit(
        session=session, caller=caller, device_id=device_id, event=AdmissionEvent.DECOMMISSION
    )
    return DeviceRead.model_validate(device)
