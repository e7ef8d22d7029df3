"""Authentication (bearer JWTs from OIDC issuers and the embedded issuer) and the role matrix."""

from fleetlift.auth.local_issuer import LocalIssuer
from fleetlift.auth.rules import (
    ROLE_PERMISSIONS,
    Permission,
    Principal,
    Role,
    permissions_for,
    roles_from_claim,
)
from fleetlift.auth.verifier import IssuerConfig, TokenVerifier

__all__ = [
    "ROLE_PERMISSIONS",
    "IssuerConfig",
    "LocalIssuer",
    "Permission",
    "Principal",
    "Role",
    "TokenVerifier",
    "permissions_for",
    "roles_from_claim",
]
