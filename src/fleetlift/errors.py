"""The exception tree of fleetlift.

Domain code raises these; only the HTTP layer (``fleetlift.problems``) turns them into
``application/problem+json`` answers, so services never think about status codes::

    FleetliftError
    ├── InvalidInput            400  malformed or semantically invalid input
    │   └── ConditionSyntaxError 400  a target condition that does not parse (carries the position)
    ├── Unauthenticated         401  no, expired or invalid credentials
    ├── Forbidden               403  authenticated, but the role does not allow it
    ├── NotFound                404  no such resource in the caller's tenant
    ├── Conflict                409  duplicate ID, resource in use, state that forbids the change
    │   ├── IllegalTransition   409  a state machine refused an event
    │   └── Incompatible        409  a release that does not fit a device
    ├── PreconditionFailed      412  a stale ``If-Match``
    ├── BadGateway              502  a backend answered, but wrongly (a registry's digest that lies)
    └── BackendUnavailable      503  a database or adapter that cannot be reached
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FieldError:
    """One problem with one input field; ``location`` is a dotted path such as ``body.target.condition``."""

    location: str
    message: str


class FleetliftError(Exception):
    """Base of every error fleetlift raises on purpose."""

    status = 500
    title = "Internal error"
    type_slug = "internal"

    def __init__(self, detail: str, *, extra: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra or {}


class InvalidInput(FleetliftError):
    status = 400
    title = "Invalid input"
    type_slug = "invalid-input"

    def __init__(
        self,
        detail: str,
        *,
        errors: list[FieldError] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail, extra=extra)
        self.errors = errors or []


class ConditionSyntaxError(InvalidInput):
    type_slug = "invalid-target-condition"
    title = "Invalid target condition"

    def __init__(self, message: str, *, position: int, text: str) -> None:
        super().__init__(
            f"{message} at position {position}",
            extra={"position": position},
        )
        self.message = message
        self.position = position
        self.text = text


class Unauthenticated(FleetliftError):
    status = 401
    title = "Unauthenticated"
    type_slug = "unauthenticated"


class Forbidden(FleetliftError):
    status = 403
    title = "Forbidden"
    type_slug = "forbidden"


class NotFound(FleetliftError):
    status = 404
    title = "Not found"
    type_slug = "not-found"


class Conflict(FleetliftError):
    status = 409
    title = "Conflict"
    type_slug = "conflict"


class IllegalTransition(Conflict):
    title = "Illegal state transition"
    type_slug = "illegal-transition"


class Incompatible(Conflict):
    title = "Incompatible release"
    type_slug = "incompatible-release"


class PreconditionFailed(FleetliftError):
    status = 412
    title = "Precondition failed"
    type_slug = "precondition-failed"


class BadGateway(FleetliftError):
    status = 502
    title = "Bad gateway"
    type_slug = "bad-gateway"


class BackendUnavailable(FleetliftError):
    status = 503
    title = "Backend unavailable"
    type_slug = "backend-unavailable"
