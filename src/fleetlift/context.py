"""Who is asking: the authenticated caller as services see it."""

from __future__ import annotations

from dataclasses import dataclass, field

from fleetlift.auth.rules import Permission, Role, permissions_for
from fleetlift.errors import Forbidden


@dataclass(frozen=True)
class Caller:
    """An authenticated principal within one request, scoped to one tenant."""

    subject: str
    roles: frozenset[Role]
    tenant_id: str
    request_id: str
    permissions: frozenset[Permission] = field(default=frozenset())

    @classmethod
    def of(cls, *, subject: str, roles: frozenset[Role], tenant_id: str, request_id: str) -> Caller:
        """A caller with the permissions its roles grant."""
        return cls(subject, roles, tenant_id, request_id, permissions_for(roles))

    @property
    def role_names(self) -> str:
        """The caller's roles as stored in the audit log."""
        return ",".join(sorted(role.value for role in self.roles)) or "none"

    def require(self, permission: Permission) -> None:
        """Refuse when the caller's roles do not grant ``permission``."""
        if permission not in self.permissions:
            raise Forbidden(f"this operation needs the '{permission.value}' permission")
