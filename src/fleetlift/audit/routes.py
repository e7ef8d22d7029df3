"""HTTP routes of the audit log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import AwareDatetime

from fleetlift.api.common import Page
from fleetlift.api.deps import PageDep, SessionDep, permit
from fleetlift.api.docs import operation
from fleetlift.audit import service
from fleetlift.audit.repository import AuditFilter
from fleetlift.audit.schemas import AuditEntryRead
from fleetlift.auth import Permission
from fleetlift.context import Caller

router = APIRouter(prefix="/audit", tags=["audit"])


@router.get(
    "",
    response_model=Page[AuditEntryRead],
    **operation(
        Permission.AUDIT_READ,
        summary="Read the audit log",
        description="Every attempted change, newest first: who (subject and roles), what (action "
        "and resource), the outcome (success, denied, failed) with its status code, when, and the "
        "request ID. Filter by any of them and by a time window.",
        errors=(400,),
    ),
)
def list_audit(
    session: SessionDep,
    caller: Annotated[Caller, permit(Permission.AUDIT_READ)],
    page: PageDep,
    actor: Annotated[str | None, Query(max_length=200)] = None,
    action: Annotated[str | None, Query(max_length=100, examples=["deployments.create"])] = None,
    resource_type: Annotated[str | None, Query(max_length=50)] = None,
    resource_id: Annotated[str | None, Query(max_length=200)] = None,
    outcome: Annotated[str | None, Query(pattern="^(success|denied|failed)$")] = None,
    since: AwareDatetime | None = None,
    until: AwareDatetime | None = None,
) -> Page[AuditEntryRead]:
    filters = AuditFilter(
        actor=actor,
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        outcome=outcome,
        since=since,
        until=until,
    )
    result = service.list_entries(session=session, caller=caller, filters=filters, page=page)
    return Page(
        items=[AuditEntryRead.model_validate(e) for e in result.items], next_cursor=result.next_cursor
    )
