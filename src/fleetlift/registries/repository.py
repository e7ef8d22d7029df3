"""All SQL of registry credentials."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleetlift.registries.models import RegistryCredential


def get(session: Session, *, tenant_id: str, host: str) -> RegistryCredential | None:
    return session.get(RegistryCredential, (tenant_id, host))


def add(session: Session, row: RegistryCredential) -> None:
    session.add(row)


def delete(session: Session, row: RegistryCredential) -> None:
    session.delete(row)


def list_all(session: Session, *, tenant_id: str) -> Sequence[RegistryCredential]:
    return session.scalars(
        select(RegistryCredential)
        .where(RegistryCredential.tenant_id == tenant_id)
        .order_by(RegistryCredential.host)
    ).all()
