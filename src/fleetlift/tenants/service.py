"""Use cases of tenants. The embedded default has exactly one, created at start-up."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from fleetlift.db import transaction
from fleetlift.tenants import repository


def ensure_default(sessions: sessionmaker[Session], *, tenant_id: str) -> None:
    """Make sure the default tenant exists so a fresh install needs no setup."""
    try:
        with transaction(sessions) as session:
            repository.ensure(session, tenant_id=tenant_id, name=tenant_id)
    except IntegrityError:
        pass  # another replica created it at the same moment
