"""Use cases of the audit log: record what was attempted, list it."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from fleetlift.audit import repository
from fleetlift.audit.models import AuditEntry
from fleetlift.audit.repository import AuditFilter
from fleetlift.context import Caller
from fleetlift.db import transaction, utcnow
from fleetlift.ids import new_id
from fleetlift.pagination import Page, PageRequest, page_of


class Outcome(StrEnum):
    SUCCESS = "success"
    DENIED = "denied"
    FAILED = "failed"


def record(
    session: Session,
    *,
    caller: Caller,
    action: str,
    resource_type: str,
    resource_id: str | None,
    outcome: Outcome = Outcome.SUCCESS,
    status_code: int = 200,
    details: dict[str, Any] | None = None,
) -> None:
    """Stage an audit entry in the same transaction as the change it describes."""
    repository.add(
        session,
        AuditEntry(
            tenant_id=caller.tenant_id,
            id=new_id("aud_"),
            at=utcnow(),
            actor=caller.subject,
            roles=caller.role_names,
            action=action,
            resource_type=resource_type,
            resource_id=resource_id,
            outcome=outcome.value,
            status_code=status_code,
            request_id=caller.request_id,
            details=details or {},
        ),
    )


def record_refusal(
    sessions: sessionmaker[Session],
    *,
    caller: Caller,
    action: str,
    resource_type: str,
    resource_id: str | None,
    status_code: int,
    reason: str,
) -> None:
    """Record a refused or failed attempt in its own transaction (the change itself rolled back)."""
    outcome = Outcome.DENIED if status_code in (401, 403) else Outcome.FAILED
    with transaction(sessions) as session:
        record(
            session,
            caller=caller,
            action=action,
            resource_type=resource_type,
            resource_id=resource_id,
            outcome=outcome,
            status_code=status_code,
            details={"reason": reason[:500]},
        )


def list_entries(
    *, session: Session, caller: Caller, filters: AuditFilter, page: PageRequest
) -> Page[AuditEntry]:
    """The tenant's audit log, newest first."""
    rows = repository.list_entries(session, tenant_id=caller.tenant_id, filters=filters, page=page)
    return page_of(rows, page, lambda entry: [entry.id])
