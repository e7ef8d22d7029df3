"""Management routes of what devices tell: notifications and update logs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from fleetlift.api.common import Page
from fleetlift.api.deps import PageDep, SessionDep, permit
from fleetlift.api.docs import operation
from fleetlift.auth import Permission
from fleetlift.context import Caller
from fleetlift.notifications import service
from fleetlift.notifications.schemas import Level, LogRead, NotificationRead

router = APIRouter(tags=["devices"])


@router.get(
    "/notifications",
    response_model=Page[NotificationRead],
    **operation(
        Permission.DEVICES_READ,
        summary="List device notifications",
        description="Notifications devices sent (info, warning, critical), newest first, fleet-wide or "
        "for one `device_id`, optionally of one `level`. A device that sent a critical one shows "
        "`critical_at`.",
        errors=(400,),
    ),
)
def list_notifications(
    session: SessionDep,
    caller: Annotated[Caller, permit(Permission.DEVICES_READ)],
    page: PageDep,
    device_id: Annotated[str | None, Query(max_length=128)] = None,
    level: Level | None = None,
) -> Page[NotificationRead]:
    result = service.list_notifications(
        session=session, caller=caller, device_id=device_id, level=level, page=page
    )
    return Page(
        items=[NotificationRead.model_validate(n) for n in result.items], next_cursor=result.next_cursor
    )


@router.get(
    "/deployments/{deployment_id}/devices/{device_id}/log",
    response_model=LogRead,
    **operation(
        Permission.DEPLOYMENTS_READ,
        summary="Read a device's update log",
        description="The log a device uploaded for this deployment (typically of a failed update).",
        errors=(404,),
    ),
)
def read_log(
    deployment_id: str,
    device_id: str,
    session: SessionDep,
    caller: Annotated[Caller, permit(Permission.DEPLOYMENTS_READ)],
) -> LogRead:
    row = service.read_log(session=session, caller=caller, deployment_id=deployment_id, device_id=device_id)
    return LogRead(
        deployment_id=row.deployment_id, device_id=row.device_id, log=row.content, uploaded_at=row.uploaded_at
    )
