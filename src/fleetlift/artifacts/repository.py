"""All SQL of artifacts."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fleetlift.artifacts.models import Artifact, Blob, ReleaseArtifact
from fleetlift.pagination import PageRequest


def get(session: Session, *, tenant_id: str, artifact_id: str) -> Artifact | None:
    return session.get(Artifact, (tenant_id, artifact_id))


def get_with_storage_key(
    session: Session, *, tenant_id: str, artifact_id: str
) -> tuple[Artifact, str] | None:
    """An artifact and where its bytes are stored, in one query (the download hot path)."""
    row = session.execute(
        select(Artifact, Blob.storage_key)
        .join(Blob, (Blob.tenant_id == Artifact.tenant_id) & (Blob.sha256 == Artifact.sha256))
        .where(Artifact.tenant_id == tenant_id, Artifact.id == artifact_id)
    ).first()
    return None if row is None else (row[0], row[1])


def get_many(session: Session, *, tenant_id: str, artifact_ids: Sequence[str]) -> dict[str, Artifact]:
    rows = session.scalars(
        select(Artifact).where(Artifact.tenant_id == tenant_id, Artifact.id.in_(artifact_ids))
    )
    return {row.id: row for row in rows}


def find_by_name_version(session: Session, *, tenant_id: str, name: str, version: str) -> Artifact | None:
    return session.scalars(
        select(Artifact).where(
            Artifact.tenant_id == tenant_id, Artifact.name == name, Artifact.version == version
        )
    ).first()


def get_blob(session: Session, *, tenant_id: str, sha256: str) -> Blob | None:
    return session.get(Blob, (tenant_id, sha256))


def add(session: Session, row: Artifact | Blob | ReleaseArtifact) -> None:
    session.add(row)


def delete(session: Session, row: Artifact | Blob) -> None:
    session.delete(row)


def count_artifacts_of_blob(session: Session, *, tenant_id: str, sha256: str) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(Artifact)
            .where(Artifact.tenant_id == tenant_id, Artifact.sha256 == sha256)
        )
        or 0
    )


def releases_using(session: Session, *, tenant_id: str, artifact_id: str, limit: int = 20) -> Sequence[str]:
    return session.scalars(
        select(ReleaseArtifact.release_id)
        .where(ReleaseArtifact.tenant_id == tenant_id, ReleaseArtifact.artifact_id == artifact_id)
        .order_by(ReleaseArtifact.release_id)
        .limit(limit)
    ).all()


def list_artifacts(
    session: Session, *, tenant_id: str, name: str | None, kind: str | None, page: PageRequest
) -> Sequence[Artifact]:
    """Newest first, one row more than the page."""
    query = select(Artifact).where(Artifact.tenant_id == tenant_id)
    if name is not None:
        query = query.where(Artifact.name == name)
    if kind is not None:
        query = query.where(Artifact.kind == kind)
    if page.after:
        query = query.where(Artifact.id < page.after[0])
    return session.scalars(query.order_by(Artifact.id.desc()).limit(page.limit + 1)).all()
