"""All SQL of the release slice."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fleetlift.deployments.models import Deployment
from fleetlift.pagination import PageRequest
from fleetlift.releases.models import Release
from fleetlift.sqljson import json_array_empty_or_contains


def get(session: Session, *, tenant_id: str, release_id: str) -> Release | None:
    return session.get(Release, (tenant_id, release_id))


def find_by_name_version(session: Session, *, tenant_id: str, name: str, version: str) -> Release | None:
    return session.scalars(
        select(Release).where(
            Release.tenant_id == tenant_id, Release.name == name, Release.version == version
        )
    ).first()


def add(session: Session, release: Release) -> None:
    session.add(release)


def delete(session: Session, release: Release) -> None:
    session.delete(release)


def count_deployments_using(session: Session, *, tenant_id: str, release_id: str) -> int:
    """Deployments (deleted ones too: they keep history) that reference the release."""
    return (
        session.scalar(
            select(func.count())
            .select_from(Deployment)
            .where(Deployment.tenant_id == tenant_id, Deployment.release_id == release_id)
        )
        or 0
    )


def list_releases(
    session: Session,
    *,
    tenant_id: str,
    name: str | None,
    device_type: str | None,
    page: PageRequest,
) -> Sequence[Release]:
    """Newest first, one row more than the page."""
    query = select(Release).where(Release.tenant_id == tenant_id)
    if name is not None:
        query = query.where(Release.name == name)
    if page.after:
        query = query.where(Release.id < page.after[0])
    if device_type is not None:
        dialect = session.get_bind().dialect.name
        query = query.where(json_array_empty_or_contains(Release.device_types, device_type, dialect))
    return session.scalars(query.order_by(Release.id.desc()).limit(page.limit + 1)).all()
