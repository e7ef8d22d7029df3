"""OpenAPI metadata for operations: who may call them and how they fail."""

from __future__ import annotations

from typing import Any

from fleetlift.api.common import problem_responses
from fleetlift.auth import ROLE_PERMISSIONS, Permission


def roles_with(permission: Permission) -> list[str]:
    """The roles whose permissions include ``permission``, in matrix order."""
    return [role.value for role, granted in ROLE_PERMISSIONS.items() if permission in granted]


def operation(
    permission: Permission,
    *,
    summary: str,
    description: str,
    errors: tuple[int, ...] = (),
    extra_permission_note: str = "",
    request_body: dict[str, Any] | None = None,
    responses: dict[int | str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Decorator arguments for a management operation: summary, description with the roles it
    needs, its problem responses (401 and 403 always) and the ``x-fleetlift-*`` extensions."""
    roles = roles_with(permission)
    extensions: dict[str, Any] = {"x-fleetlift-permission": permission.value, "x-fleetlift-roles": roles}
    if request_body is not None:
        extensions["requestBody"] = request_body
    note = f"\n\n**Permission:** `{permission.value}` (roles: {', '.join(roles)}).{extra_permission_note}"
    return {
        "summary": summary,
        "description": description + note,
        "responses": {**(responses or {}), **problem_responses(*sorted({401, 403, *errors}))},
        "openapi_extra": extensions,
    }
