"""Every error leaves the API as RFC 9457 ``application/problem+json``; nothing else renders errors."""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm.exc import StaleDataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from fleetlift.api.common import PROBLEM_MEDIA_TYPE
from fleetlift.errors import (
    BackendUnavailable,
    Conflict,
    FleetliftError,
    InvalidInput,
    PreconditionFailed,
)

log = logging.getLogger("fleetlift.api")

_HTTP_TITLES = {
    404: "Not found",
    405: "Method not allowed",
    406: "Not acceptable",
    413: "Request body too large",
    415: "Unsupported media type",
}


def problem_response(
    request: Request,
    *,
    status: int,
    title: str,
    detail: str,
    type_slug: str,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """A problem document for ``request``, carrying its request ID."""
    body: dict[str, Any] = {
        "type": f"urn:fleetlift:problem:{type_slug}",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        "request_id": getattr(request.state, "request_id", None),
    }
    if extra:
        body.update({key: value for key, value in extra.items() if key not in body})
    return JSONResponse(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def _from_error(request: Request, error: FleetliftError) -> JSONResponse:
    extra = dict(error.extra)
    if isinstance(error, InvalidInput) and error.errors:
        extra["errors"] = [{"location": e.location, "message": e.message} for e in error.errors]
    headers = {"WWW-Authenticate": 'Bearer realm="fleetlift"'} if error.status == 401 else None
    retry_after = extra.get("retry_after")
    if error.status == 503 and isinstance(retry_after, int | float) and not isinstance(retry_after, bool):
        # A backend that said when to come back (IoT Hub's throttling): tell the client the same.
        headers = {"Retry-After": str(max(0, math.ceil(retry_after)))}
    _audit_refusal(request, error.status, error.detail)
    return problem_response(
        request,
        status=error.status,
        title=error.title,
        detail=error.detail,
        type_slug=error.type_slug,
        extra=extra,
        headers=headers,
    )


def _audit_refusal(request: Request, status: int, reason: str) -> None:
    """Refused changes are audited too; the route said what it was about to do."""
    recorder = getattr(request.app.state, "audit_refusal", None)
    if recorder is not None:
        recorder(request, status, reason)


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in loc)


async def _validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    errors = [{"location": _location(e["loc"]), "message": e["msg"]} for e in error.errors()[:50]]
    detail = "the request is not valid: " + "; ".join(f"{e['location']}: {e['message']}" for e in errors[:3])
    _audit_refusal(request, 400, detail)
    return problem_response(
        request,
        status=400,
        title="Invalid input",
        detail=detail,
        type_slug="invalid-input",
        extra={"errors": errors},
    )


async def _fleetlift_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, FleetliftError)
    if error.status >= 500:
        log.error("backend failure: %s", error.detail)
    return _from_error(request, error)


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    title = _HTTP_TITLES.get(error.status_code, "Error")
    detail = str(error.detail) if error.detail else title
    if error.status_code == 404 and detail == "Not Found":
        detail = f"no route for {request.method} {request.url.path}"
    return problem_response(
        request,
        status=error.status_code,
        title=title,
        detail=detail,
        type_slug=title.lower().replace(" ", "-"),
        headers=dict(error.headers) if error.headers else None,
    )


async def _integrity_error(request: Request, error: Exception) -> JSONResponse:
    # Two requests raced to create the same thing; the unique constraint decided.
    log.info("integrity conflict: %s", type(error).__name__)
    return _from_error(
        request, Conflict("the change conflicts with data stored meanwhile; read again and retry")
    )


async def _stale_error(request: Request, error: Exception) -> JSONResponse:
    return _from_error(
        request,
        PreconditionFailed("the resource was changed by another request meanwhile; read it again and retry"),
    )


async def _database_down(request: Request, error: Exception) -> JSONResponse:
    log.error("database unavailable: %s", type(error).__name__)
    return _from_error(request, BackendUnavailable("the database is unavailable; try again shortly"))


async def _unexpected(request: Request, error: Exception) -> JSONResponse:
    log.exception("unhandled error in %s %s", request.method, request.url.path)
    return problem_response(
        request,
        status=500,
        title="Internal error",
        detail="an unexpected error occurred; quote the request_id when reporting it",
        type_slug="internal",
    )


def install(app: FastAPI) -> None:
    """Register every error renderer on the app."""
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(FleetliftError, _fleetlift_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(IntegrityError, _integrity_error)
    app.add_exception_handler(StaleDataError, _stale_error)
    app.add_exception_handler(OperationalError, _database_down)
    app.add_exception_handler(Exception, _unexpected)
