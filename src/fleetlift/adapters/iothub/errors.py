"""IoT Hub's error answers turned into fleetlift's own errors, with the hub's code kept in them.

The hub answers errors in two body shapes, and usually with an ``iothub-errorcode`` header too::

    {"Message": "ErrorCode:DeviceNotFound;Device abc not registered", "ExceptionMessage": "Tracking ID:..."}
    {"errorCode": 404103, "message": "Timed out waiting for device to connect.", "trackingId": "...",
     "timestampUtc": "2021-03-11T23:59:59.9999999Z"}

Every class below subclasses both :class:`IotHubError` (``hub_code``, ``hub_status``) and the fleetlift
error whose HTTP status fits what the hub's answer means for *our* caller::

    IotHubError
    ├── IotHubInvalidInput       400  the hub refused what we sent (condition, id, content)
    ├── IotHubNotFound           404
    │   └── DeviceNotOnline      404  404103: a direct method to a device that is not connected
    ├── IotHubConflict           409  e.g. a configuration ID that exists already
    │   └── IotHubQuotaExceeded  409  e.g. more than 100 configurations in one hub
    ├── IotHubPreconditionFailed 412  a stale ETag
    ├── IotHubBadGateway         502  the hub refused fleetlift's credentials (401/403) or its request
    │                                 (405, 415, ...), failed inside (500), or answered nonsense
    └── IotHubUnavailable        503  unreachable, 503/504
        └── Throttled            503  429 after the retries; ``retry_after`` in ``extra``
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from fleetlift.errors import (
    BackendUnavailable,
    BadGateway,
    Conflict,
    FleetliftError,
    InvalidInput,
    NotFound,
    PreconditionFailed,
)

# The numeric codes of the hub's troubleshooting guides that we name (the header usually names them).
KNOWN_CODES: dict[int, str] = {
    401003: "IoTHubUnauthorized",
    403002: "IoTHubQuotaExceeded",
    404001: "DeviceNotFound",
    404103: "DeviceNotOnline",
    404104: "DeviceConnectionClosedRemotely",
    409001: "DeviceAlreadyExists",
    429001: "ThrottlingException",
    503003: "PartitionNotFound",
    504101: "GatewayTimeout",
}

_MAX_MESSAGE = 300  # a hub message is context, not a document: keep problem details short

# Anything that looks like a credential is cut out of hub messages before they reach a log or a caller.
_SECRETS = re.compile(
    r"(SharedAccessSignature\s+\S+|\b(?:sig|SharedAccessKey)=[^;&\s]+|Bearer\s+\S+)",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """``text`` with SAS tokens, keys and bearer tokens replaced by ``[redacted]``."""
    return _SECRETS.sub("[redacted]", text)


class IotHubError(FleetliftError):
    """An error answer of the hub (or no answer at all), with the hub's code and status."""

    def __init__(
        self,
        detail: str,
        *,
        hub_code: str | None = None,
        hub_status: int | None = None,
        tracking_id: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        fields: dict[str, Any] = {"hub_code": hub_code, "hub_status": hub_status}
        if tracking_id:
            fields["hub_tracking_id"] = tracking_id
        fields.update(extra or {})
        super().__init__(redact(detail), extra=fields)
        self.hub_code = hub_code
        self.hub_status = hub_status
        self.tracking_id = tracking_id


class IotHubInvalidInput(IotHubError, InvalidInput):
    """The hub refused the request as malformed (a target condition, an ID, immutable content)."""


class IotHubNotFound(IotHubError, NotFound):
    """The device, module or configuration does not exist in the hub."""


class DeviceNotOnline(IotHubNotFound):
    """A direct method could not reach the device: it is not connected (404103)."""


class IotHubConflict(IotHubError, Conflict):
    """The hub refused because of its current state (an ID that exists already)."""


class IotHubQuotaExceeded(IotHubConflict):
    """A hub limit is reached (at most 100 configurations per hub, the daily message quota)."""


class IotHubPreconditionFailed(IotHubError, PreconditionFailed):
    """The ETag given in ``If-Match`` is stale."""


class IotHubBadGateway(IotHubError, BadGateway):
    """The hub answered, but not usefully: refused our credentials, failed inside, or sent nonsense."""


class IotHubUnavailable(IotHubError, BackendUnavailable):
    """The hub could not be reached or was unavailable, after the retries."""


class Throttled(IotHubUnavailable):
    """The hub (or fleetlift's own limiter) throttled us beyond the retries; try after ``retry_after``."""


def _parse_body(body: bytes | str, *, depth: int = 0) -> tuple[str | None, int | None, str, str | None]:
    """(symbolic code, numeric code, message, tracking ID) from either of the hub's body shapes."""
    try:
        document = json.loads(body) if body else None
    except ValueError:
        document = None
    if not isinstance(document, dict):
        return None, None, "", None
    wrapped = document.get("Message")
    if depth == 0 and isinstance(wrapped, str) and wrapped.lstrip().startswith("{"):
        # Direct-method errors arrive as the second shape serialized inside the first one's "Message".
        inner = _parse_body(wrapped, depth=1)
        if inner[0] is not None or inner[1] is not None:
            return inner
    symbolic: str | None = None
    numeric: int | None = None
    message = ""
    tracking: str | None = None
    if isinstance(document.get("Message"), str):
        # "ErrorCode:DeviceNotFound;Device abc not registered"
        text = document["Message"]
        match = re.match(r"\s*ErrorCode:\s*([A-Za-z0-9_]+)\s*;?(.*)", text, re.DOTALL)
        if match:
            symbolic, message = match.group(1), match.group(2).strip()
        else:
            message = text.strip()
        exception = document.get("ExceptionMessage")
        if isinstance(exception, str):
            found = re.search(r"Tracking ID:\s*(.+?)(?:-TimeStamp:|$)", exception)
            tracking = found.group(1).strip() if found else None
    code = document.get("errorCode")
    if isinstance(code, int) and not isinstance(code, bool):
        numeric = code
    elif isinstance(code, str) and code.isdigit():
        numeric = int(code)
    elif isinstance(code, str) and code:
        symbolic = symbolic or code
    if not message and isinstance(document.get("message"), str):
        message = document["message"].strip()
    if tracking is None and isinstance(document.get("trackingId"), str):
        tracking = document["trackingId"]
    return symbolic, numeric, message, tracking


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The ``Retry-After`` header in seconds, when it holds a number (the hub sends delta-seconds)."""
    value = _header(headers, "retry-after")
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None  # an HTTP-date: the hub does not send those; fall back to our own backoff
    return seconds if seconds >= 0 else None


def error_from_response(status: int, headers: Mapping[str, str], body: bytes) -> IotHubError:
    """The fleetlift error for one error answer of the hub."""
    symbolic, numeric, message, tracking = _parse_body(body)
    header_code = (_header(headers, "iothub-errorcode") or "").strip() or None
    # The header names the code most reliably; then the body's "ErrorCode:" text; then its number.
    name = header_code or symbolic or (KNOWN_CODES.get(numeric) if numeric is not None else None)
    hub_code = name or (str(numeric) if numeric is not None else None)
    extra: dict[str, Any] = {}
    if numeric is not None:
        extra["hub_error_number"] = numeric
    text = message[:_MAX_MESSAGE] or f"HTTP {status}"
    detail = f"IoT Hub answered {status}" + (f" {hub_code}" if hub_code else "") + f": {text}"
    kwargs: dict[str, Any] = {
        "hub_code": hub_code,
        "hub_status": status,
        "tracking_id": tracking,
        "extra": extra,
    }
    lowered = (name or "").lower()
    if status == 404 and (numeric == 404103 or lowered == "devicenotonline"):
        return DeviceNotOnline(detail, **kwargs)
    # A real hub answers the 101st configuration with 413 ConfigurationCountLimitExceeded.
    limit = status in (400, 403, 409, 413) and "limitexceeded" in lowered
    if "quota" in lowered or numeric == 403002 or limit:
        return IotHubQuotaExceeded(detail, **kwargs)
    if status == 429:
        seconds = retry_after_seconds(headers)
        if seconds is not None:
            extra["retry_after"] = seconds
        return Throttled(detail, **kwargs)
    if status in (401, 403):
        # Our credentials or the policy's rights are wrong: the operator must fix fleetlift's settings.
        return IotHubBadGateway(
            f"IoT Hub refused fleetlift's credentials ({status}"
            + (f" {hub_code}" if hub_code else "")
            + "): check the connection string's policy (registry read/write, service connect) "
            "or the Entra ID role assignment",
            **kwargs,
        )
    simple: dict[int, type[IotHubError]] = {
        400: IotHubInvalidInput,
        404: IotHubNotFound,
        409: IotHubConflict,
        412: IotHubPreconditionFailed,
        503: IotHubUnavailable,
        504: IotHubUnavailable,
    }
    if status in simple:
        return simple[status](detail, **kwargs)
    # Other refusals (405, 413, 415, ...) mean fleetlift itself sent what the hub does not take, and
    # 500 or an unknown status is the hub failing: neither is the caller's to fix.
    return IotHubBadGateway(detail, **kwargs)
