"""All SQL of the audit slice."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleetlift.audit.models import AuditEntry
from fleetlift.pagination import PageRequest


@dataclass(frozen=True)
class AuditFilter:
    actor: str | None = None
    action: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    outcome: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def add(session: Session, entry: AuditEntry) -> None:
    """Stage one audit entry in the caller's transaction."""
    session.add(entry)


def list_entries(
    session: Session, *, tenant_id: str, filters: AuditFilter, page: PageRequest
) -> Sequence[AuditEntry]:
    """Newest first; one row more than the page to tell whether another follows."""
    query = select(AuditEntry).where(AuditEntry.tenant_id == tenant_id)
    for column, value in (
        (AuditEntry.actor, filters.actor),
        (AuditEntry.action, filters.action),
        (AuditEntry.resource_type, filters.resource_type),
        (AuditEntry.resource_id, filters.resource_id),
        (AuditEntry.outcome, filters.outcome),
    ):
        if value is not None:
            query = query.where(column == value)
    if filters.since is not None:
        query = query.where(AuditEntry.at >= filters.since)
    if filters.until is not None:
        query = query.where(AuditEntry.at < filters.until)
    if page.after:
        query = query.where(AuditEntry.id < page.after[0])
    query = query.order_by(AuditEntry.id.desc()).limit(page.limit + 1)
    return session.scalars(query).all()
