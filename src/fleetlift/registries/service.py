"""Use cases of registry credentials: store them sealed, hand them only to the registry client."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from fleetlift.audit import service as audit
from fleetlift.context import Caller
from fleetlift.db import utcnow
from fleetlift.errors import NotFound
from fleetlift.images.rules import Credentials
from fleetlift.registries import repository
from fleetlift.registries.models import RegistryCredential
from fleetlift.registries.schemas import RegistryCredentialWrite
from fleetlift.secrets_box import SecretBox


def _context(tenant_id: str, registry: str) -> str:
    return f"registry-credential/{tenant_id}/{registry}"


def put(
    *, session: Session, box: SecretBox, caller: Caller, registry: str, data: RegistryCredentialWrite
) -> RegistryCredential:
    """Store (or replace) the credentials of a registry; the password is sealed before it is stored."""
    sealed = box.seal(data.password.get_secret_value(), context=_context(caller.tenant_id, registry))
    row = repository.get(session, tenant_id=caller.tenant_id, host=registry)
    now = utcnow()
    if row is None:
        row = RegistryCredential(tenant_id=caller.tenant_id, host=registry)
        repository.add(session, row)
    row.username = data.username
    row.sealed_password = sealed
    row.updated_by = caller.subject
    row.updated_at = now
    audit.record(
        session,
        caller=caller,
        action="registries.credentials.put",
        resource_type="registry",
        resource_id=registry,
        details={"username": data.username},  # never the password
    )
    session.commit()
    return row


def list_credentials(*, session: Session, caller: Caller) -> Sequence[RegistryCredential]:
    """Every registry the tenant has credentials for (no passwords)."""
    return repository.list_all(session, tenant_id=caller.tenant_id)


def delete(*, session: Session, caller: Caller, registry: str) -> None:
    """Forget a registry's credentials."""
    row = repository.get(session, tenant_id=caller.tenant_id, host=registry)
    if row is None:
        raise NotFound(f"no credentials for registry '{registry}' in this tenant")
    repository.delete(session, row)
    audit.record(
        session,
        caller=caller,
        action="registries.credentials.delete",
        resource_type="registry",
        resource_id=registry,
        status_code=204,
    )
    session.commit()


def credentials_by_registry(*, session: Session, box: SecretBox, tenant_id: str) -> dict[str, Credentials]:
    """The tenant's opened credentials by registry, for the registry client only."""
    return {
        row.host: Credentials(
            row.username, box.open(row.sealed_password, context=_context(tenant_id, row.host))
        )
        for row in repository.list_all(session, tenant_id=tenant_id)
    }
