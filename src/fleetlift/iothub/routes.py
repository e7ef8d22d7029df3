"""HTTP routes of the IoT Hub slice."""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import APIRouter, Path, Query, Request, Response

from fleetlift.api.common import Page
from fleetlift.api.deps import AuditIntent, IfMatch, PageDep, SessionDep, permit
from fleetlift.api.docs import operation
from fleetlift.auth import Permission
from fleetlift.context import Caller
from fleetlift.etags import etag_of
from fleetlift.iothub import service
from fleetlift.iothub.models import IotHub
from fleetlift.iothub.schemas import (
    ApplyRequest,
    ApplyResult,
    IotHubCreate,
    IotHubDeploymentRead,
    IotHubRead,
    IotHubUpdate,
    MethodTriggerRequest,
    MethodTriggerResult,
    SyncResult,
    SyncSummary,
)

router = APIRouter(prefix="/iothub", tags=["iothub"])

HubId = Annotated[str, Path(max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")]
DeviceIdPath = Annotated[str, Path(max_length=128, pattern=r"^[A-Za-z0-9\-.:_%#*?!(),=@$']+$")]


def _read(hub: IotHub) -> IotHubRead:
    return IotHubRead(
        id=hub.id,
        name=hub.name,
        host_name=hub.host_name,
        auth=hub.auth,
        key_name=hub.key_name,
        sync_condition=hub.sync_condition,
        sync_interval_seconds=hub.sync_interval_seconds,
        last_sync=SyncSummary(
            at=hub.last_sync_at,
            status=hub.last_sync_status,
            error=hub.last_sync_error,
            counts=dict(hub.last_sync_counts or {}),
        ),
        created_by=hub.created_by,
        created_at=hub.created_at,
        updated_at=hub.updated_at,
    )


def _clients(request: Request) -> service.HubClients:
    clients: service.HubClients = request.app.state.iothub_clients
    return clients


def _admin(action: str) -> object:
    return permit(
        Permission.IOTHUB_WRITE,
        audit=AuditIntent(action=action, resource_type="iothub", resource_param="hub_id"),
    )


def _intent(permission: Permission, action: str) -> object:
    return permit(
        permission, audit=AuditIntent(action=action, resource_type="iothub", resource_param="hub_id")
    )


@router.post(
    "/hubs",
    status_code=201,
    response_model=IotHubRead,
    **operation(
        Permission.IOTHUB_WRITE,
        summary="Register an IoT hub",
        description="Registers an Azure IoT hub to sync devices from and deliver IoT Edge deployments "
        "through: a service connection string of a shared access policy (registry read/write, service "
        "connect), or `auth: entra` with the hub's host name (the server's Entra ID identity). The "
        "connection string is checked, stored sealed and never answered or logged; a malformed one is "
        "a 400 that does not repeat it. Host names end in `.azure-devices.net`.",
        errors=(400, 409, 413, 415),
    ),
)
def create_hub(
    data: IotHubCreate,
    request: Request,
    session: SessionDep,
    response: Response,
    caller: Annotated[Caller, _admin("iothub.hubs.create")],
) -> IotHubRead:
    hub = service.create_hub(session=session, clients=_clients(request), caller=caller, data=data)
    response.headers["ETag"] = etag_of(hub.row_version)
    response.headers["Location"] = f"/api/v1/iothub/hubs/{hub.id}"
    return _read(hub)


@router.get(
    "/hubs",
    response_model=Page[IotHubRead],
    **operation(
        Permission.DEVICES_READ,
        summary="List IoT hubs",
        description="The registered hubs by ID, with how their last device sync went.",
        errors=(400,),
    ),
)
def list_hubs(
    session: SessionDep, caller: Annotated[Caller, permit(Permission.DEVICES_READ)], page: PageDep
) -> Page[IotHubRead]:
    result = service.list_hubs(session=session, caller=caller, page=page)
    return Page(items=[_read(hub) for hub in result.items], next_cursor=result.next_cursor)


@router.get(
    "/hubs/{hub_id}",
    response_model=IotHubRead,
    **operation(
        Permission.DEVICES_READ,
        summary="Get an IoT hub",
        description="One hub: host, policy name, sync settings and the last sync; never its key.",
        errors=(404,),
    ),
)
def get_hub(
    hub_id: HubId,
    session: SessionDep,
    response: Response,
    caller: Annotated[Caller, permit(Permission.DEVICES_READ)],
) -> IotHubRead:
    hub = service.get_hub(session=session, caller=caller, hub_id=hub_id)
    response.headers["ETag"] = etag_of(hub.row_version)
    return _read(hub)


@router.patch(
    "/hubs/{hub_id}",
    response_model=IotHubRead,
    **operation(
        Permission.IOTHUB_WRITE,
        summary="Change an IoT hub",
        description="Renames a hub, changes its device sync (`sync_condition`, `null` to remove it; "
        "`sync_interval_seconds`), or gives it a new connection string after its policy's key was "
        "regenerated: same hub host, checked and sealed like at registration, never answered or "
        "logged; every server replica uses it from its next call to the hub. Fields left out stay "
        "as they are. Honors `If-Match`.",
        errors=(400, 404, 409, 412, 415),
    ),
)
def update_hub(
    hub_id: HubId,
    data: IotHubUpdate,
    request: Request,
    session: SessionDep,
    response: Response,
    caller: Annotated[Caller, _admin("iothub.hubs.update")],
    if_match: IfMatch = None,
) -> IotHubRead:
    hub = service.update_hub(
        session=session, clients=_clients(request), caller=caller, hub_id=hub_id, data=data, if_match=if_match
    )
    response.headers["ETag"] = etag_of(hub.row_version)
    return _read(hub)


@router.delete(
    "/hubs/{hub_id}",
    status_code=204,
    response_class=Response,
    **operation(
        Permission.IOTHUB_WRITE,
        summary="Forget an IoT hub",
        description="Removes the hub and the record of its configurations. Refused (409) while it "
        "delivers deployments that are not deleted or cancelled, unless `force=true`; their "
        "configurations then stay in the hub, and synced devices stay in fleetlift. Honors `If-Match`.",
        errors=(404, 409, 412),
    ),
)
async def delete_hub(
    hub_id: HubId,
    request: Request,
    caller: Annotated[Caller, _admin("iothub.hubs.delete")],
    force: bool = False,
    if_match: IfMatch = None,
) -> Response:
    def work() -> None:
        with request.app.state.sessions() as session:
            service.delete_hub(session=session, caller=caller, hub_id=hub_id, force=force, if_match=if_match)

    await anyio.to_thread.run_sync(work)
    await _clients(request).forget(caller.tenant_id, hub_id)
    return Response(status_code=204)


@router.post(
    "/hubs/{hub_id}/sync",
    response_model=SyncResult,
    **operation(
        Permission.DEVICES_WRITE,
        summary="Sync an IoT hub's devices now",
        description="Imports the hub's devices (those matching its `sync_condition`) with their tags "
        "and reported properties, page by page, so target conditions see the same tags as the hub. "
        "New devices are admitted (the hub is their identity provider); devices the hub no longer "
        "lists are kept and counted as `missing`. 502/503 when the hub refuses or cannot be reached.",
        errors=(404,),
    ),
)
async def sync_hub(
    hub_id: HubId,
    request: Request,
    caller: Annotated[Caller, _intent(Permission.DEVICES_WRITE, "iothub.hubs.sync")],
) -> SyncResult:
    return await service.sync_devices(
        sessions=request.app.state.sessions,
        clients=_clients(request),
        tenant_id=caller.tenant_id,
        hub_id=hub_id,
        caller=caller,
    )


@router.get(
    "/hubs/{hub_id}/deployments",
    response_model=Page[IotHubDeploymentRead],
    **operation(
        Permission.DEPLOYMENTS_READ,
        summary="Deployments delivered through a hub",
        description="Each deployment's current configuration in the hub: its state (`queued` with "
        "the place in the hub's queue of configuration operations, `applied`, `retiring`, `retired`, "
        "`failed` with the hub's error), the hub's counts and fleetlift's per-device counts.",
        errors=(400, 404),
    ),
)
def list_hub_deployments(
    hub_id: HubId,
    request: Request,
    session: SessionDep,
    caller: Annotated[Caller, permit(Permission.DEPLOYMENTS_READ)],
    page: PageDep,
) -> Page[IotHubDeploymentRead]:
    result = service.list_deliveries(
        session=session, clients=_clients(request), caller=caller, hub_id=hub_id, page=page
    )
    return Page(items=list(result.items), next_cursor=result.next_cursor)


@router.get(
    "/deployments/{deployment_id}",
    response_model=IotHubDeploymentRead,
    **operation(
        Permission.DEPLOYMENTS_READ,
        summary="A deployment's delivery through its hub",
        description="The configuration that carries the deployment, every revision, the hub's counts "
        "(from the configuration's system metrics) and fleetlift's per-device states (from the "
        "devices' `$edgeAgent` twins). `refresh=true` reads them from the hub now.",
        errors=(404,),
    ),
)
async def get_deployment_delivery(
    deployment_id: Annotated[str, Path(max_length=64)],
    request: Request,
    caller: Annotated[Caller, permit(Permission.DEPLOYMENTS_READ)],
    refresh: Annotated[bool, Query(description="Read the status from the hub first.")] = False,
) -> IotHubDeploymentRead:
    sessions = request.app.state.sessions
    if refresh:
        return await service.refresh_delivery(
            sessions=sessions, clients=_clients(request), caller=caller, deployment_id=deployment_id
        )

    def read() -> IotHubDeploymentRead:
        with sessions() as session:
            return service.get_delivery(
                session=session, clients=_clients(request), caller=caller, deployment_id=deployment_id
            )

    return await anyio.to_thread.run_sync(read)


@router.post(
    "/hubs/{hub_id}/devices/{device_id}/apply",
    response_model=ApplyResult,
    **operation(
        Permission.UPDATES_TRIGGER,
        summary="Apply a deployment to one IoT Edge device",
        description="Applies the deployment's modules to one IoT Edge device now "
        "(`applyConfigurationContent`), outside any configuration. 409 for a device that is not an "
        "IoT Edge device.",
        errors=(400, 404, 409, 413, 415),
    ),
)
async def apply_to_device(
    hub_id: HubId,
    device_id: DeviceIdPath,
    data: ApplyRequest,
    request: Request,
    caller: Annotated[Caller, _intent(Permission.UPDATES_TRIGGER, "iothub.devices.apply")],
) -> ApplyResult:
    return await service.apply_to_device(
        sessions=request.app.state.sessions,
        clients=_clients(request),
        caller=caller,
        hub_id=hub_id,
        device_id=device_id,
        deployment_id=data.deployment_id,
    )


@router.post(
    "/hubs/{hub_id}/devices/update",
    response_model=MethodTriggerResult,
    **operation(
        Permission.UPDATES_TRIGGER,
        summary="Tell devices to check for a deployment now",
        description="For devices running the fleetlift agent over IoT Hub: calls the direct method "
        "`fleetlift.update` on each (up to 1,000, 16 at a time); a device that is offline gets the "
        "trigger as a desired property (`properties.desired.fleetlift.update`) instead. One outcome per "
        "device: `invoked`, `desired_property` or `failed`.",
        errors=(400, 404, 413, 415),
    ),
)
async def trigger_devices(
    hub_id: HubId,
    data: MethodTriggerRequest,
    request: Request,
    caller: Annotated[Caller, _intent(Permission.UPDATES_TRIGGER, "iothub.devices.update")],
) -> MethodTriggerResult:
    return await service.trigger_devices(
        sessions=request.app.state.sessions,
        clients=_clients(request),
        caller=caller,
        hub_id=hub_id,
        data=data,
    )
