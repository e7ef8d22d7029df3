"""Request-scoped dependencies: the database session and the authenticated, authorised caller."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Header, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from fleetlift.auth import Permission
from fleetlift.context import Caller
from fleetlift.errors import Unauthenticated
from fleetlift.pagination import PageRequest, decode_cursor

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearerAuth",
    bearerFormat="JWT",
    description="An OAuth2/OIDC access token (Entra ID or the embedded issuer); roles in the `roles` claim.",
)


def get_session(request: Request) -> Iterator[Session]:
    """One session per request; services commit, the session is closed afterwards."""
    session = request.app.state.sessions()
    try:
        yield session
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]


@dataclass(frozen=True)
class AuditIntent:
    """What a mutating route is about to do, so a refusal can be audited."""

    action: str
    resource_type: str
    resource_param: str | None


def authenticate(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Caller:
    """The caller behind the bearer token; 401 when there is none or it is not valid."""
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise Unauthenticated("a bearer token is required")
    principal = request.app.state.verifier.verify(credentials.credentials)
    request.state.subject = principal.subject
    caller = Caller.of(
        subject=principal.subject,
        roles=principal.roles,
        tenant_id=principal.tenant_id,
        request_id=request.state.request_id,
    )
    request.state.caller = caller
    return caller


def permit(permission: Permission, *, audit: AuditIntent | None = None) -> Any:
    """A dependency that authenticates the caller and requires ``permission``."""

    def dependency(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
    ) -> Caller:
        if audit is not None:
            request.state.audit_intent = audit
        caller = authenticate(request, credentials)
        caller.require(permission)
        return caller

    return Depends(dependency)


def page_request(
    request: Request,
    limit: Annotated[int | None, Query(ge=1, le=1000, description="Items per page.")] = None,
    cursor: Annotated[
        str | None, Query(max_length=2048, description="`next_cursor` of the previous page.")
    ] = None,
) -> PageRequest:
    """The page a list request asks for."""
    settings = request.app.state.settings
    return PageRequest(
        limit=min(limit or settings.page_size_default, settings.page_size_max), after=decode_cursor(cursor)
    )


PageDep = Annotated[PageRequest, Depends(page_request)]
IfMatch = Annotated[
    str | None,
    Header(alias="If-Match", description="Apply only when the resource still has this ETag (412 otherwise)."),
]
