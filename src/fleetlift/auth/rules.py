"""Roles, permissions and the matrix between them: pure, the one place access is decided."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class Role(StrEnum):
    ADMIN = "admin"
    DEVELOPER = "developer"
    OPERATOR = "operator"
    VIEWER = "viewer"


class Permission(StrEnum):
    DEVICES_READ = "devices:read"
    DEVICES_WRITE = "devices:write"
    DEVICES_ADMIT = "devices:admit"
    RELEASES_READ = "releases:read"
    RELEASES_WRITE = "releases:write"
    RELEASES_OVERRIDE = "releases:override"
    DEPLOYMENTS_READ = "deployments:read"
    DEPLOYMENTS_WRITE = "deployments:write"
    DEPLOYMENTS_CONTROL = "deployments:control"
    UPDATES_TRIGGER = "updates:trigger"
    AUDIT_READ = "audit:read"
    KEYS_MANAGE = "keys:manage"
    TENANTS_MANAGE = "tenants:manage"
    EVENTS_READ = "events:read"
    WEBHOOKS_READ = "webhooks:read"
    WEBHOOKS_WRITE = "webhooks:write"
    IOTHUB_WRITE = "iothub:write"


_READ = frozenset(
    {Permission.DEVICES_READ, Permission.RELEASES_READ, Permission.DEPLOYMENTS_READ, Permission.EVENTS_READ}
)

# Developers author (releases, draft deployments); operators run the fleet (admit devices, start,
# pause and cancel rollouts, trigger updates) and answer for it (audit); viewers read.
ROLE_PERMISSIONS: Mapping[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.DEVELOPER: _READ | {Permission.RELEASES_WRITE, Permission.DEPLOYMENTS_WRITE},
    Role.OPERATOR: _READ
    | {
        Permission.DEVICES_WRITE,
        Permission.DEVICES_ADMIT,
        Permission.DEPLOYMENTS_CONTROL,
        Permission.UPDATES_TRIGGER,
        Permission.AUDIT_READ,
    },
    Role.VIEWER: _READ,
}


def permissions_for(roles: Iterable[Role]) -> frozenset[Permission]:
    """Everything any of ``roles`` grants."""
    granted: set[Permission] = set()
    for role in roles:
        granted |= ROLE_PERMISSIONS[role]
    return frozenset(granted)


def roles_from_claim(values: object, role_map: Mapping[str, str]) -> frozenset[Role]:
    """Roles from a token's roles claim (a list or a space-separated string): each value goes
    through ``role_map`` (e.g. Entra app role ``Fleet.Admin`` -> ``admin``) or names a role
    itself; anything else is ignored."""
    if isinstance(values, str):
        items: list[object] = list(values.split())
    elif isinstance(values, list | tuple):
        items = list(values)
    else:
        return frozenset()
    roles: set[Role] = set()
    known = {role.value for role in Role}
    for item in items:
        if not isinstance(item, str):
            continue
        name = role_map.get(item, item)
        if name in known:
            roles.add(Role(name))
    return frozenset(roles)


@dataclass(frozen=True)
class Principal:
    """Who a verified token speaks for."""

    subject: str
    roles: frozenset[Role]
    tenant_id: str
    issuer: str
    token_id: str | None = None
    expires_at: datetime | None = None
