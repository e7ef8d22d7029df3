"""All SQL of the tenant slice."""

from __future__ import annotations

from sqlalchemy.orm import Session

from fleetlift.tenants.models import Tenant


def ensure(session: Session, *, tenant_id: str, name: str) -> None:
    """Create the tenant row when it does not exist yet."""
    if session.get(Tenant, tenant_id) is None:
        session.add(Tenant(id=tenant_id, name=name))
