"""The device poll and status report without the framework's per-request machinery.

``GET /api/device/v1/deployments/next`` is the request a fleet sends most, and
``PUT /api/device/v1/deployments/{id}/status`` the one a wave sends most. Routing them through
FastAPI (matching against every route, solving dependencies, validating parameters, a thread per
request) cost more than answering them (docs/benchmarks.md), so this ASGI layer, inside
``RequestGuard`` (request IDs, size and media-type checks, access log and metrics still apply),
answers the well-formed ones itself:

- a poll: a GET with a bearer token and at most ``wait=<0..60>``; it runs the same poller and
  renders with the same function as the route (``routes.poll_response``);
- a report: a PUT with a bearer token whose body is exactly what ``StatusReport`` accepts; the
  token is checked as the poll checks it, and the report is recorded with others in one
  transaction (``reports.ReportBatcher``), the device's admission read in the same statement.

Everything else goes to the application untouched, and so does any request this layer would
refuse or fail (a bad token, a device not in the deployment, an impossible transition, a database
error): the route then answers it, with its validation and problem documents. The routes stay the
documented operations and the one behaviour; this is only a shorter road to them.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any, get_args

from annotated_types import MaxLen
from starlette.types import ASGIApp, Receive, Scope, Send

from fleetlift.api.middleware import replay_body
from fleetlift.deployments.rules import DeviceReport, DeviceUpdateState
from fleetlift.device_api.routes import StatusReport, poll_response

log = logging.getLogger(__name__)

POLL_PATH = "/api/device/v1/deployments/next"
STATUS_ROUTE = "/api/device/v1/deployments/{deployment_id}/status"
STATUS_PATH = re.compile(r"/api/device/v1/deployments/([A-Za-z0-9_\-]{1,64})/status")
_REPORTABLE = frozenset(get_args(StatusReport.model_fields["status"].annotation))
_MAX_DETAIL = next(
    rule.max_length for rule in StatusReport.model_fields["detail"].metadata if isinstance(rule, MaxLen)
)
_WAIT = re.compile(rb"wait=(\d{1,2})")
_MAX_IF_NONE_MATCH = 200  # as the route's header parameter


def bearer_token(scope: Scope) -> str | None:
    """The bearer token of a request with exactly one Authorization header; ``None`` otherwise."""
    token: str | None = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            if token is not None:
                return None
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not credentials:
                return None
            token = credentials
    return token


def parse_report(body: bytes) -> tuple[DeviceUpdateState, str | None] | None:
    """The state and detail of a body ``StatusReport`` accepts as it is; ``None`` for anything the
    route should judge (and explain)."""
    try:
        document = json.loads(body)
    except ValueError:
        return None
    if not isinstance(document, dict) or not document.keys() <= {"status", "detail"}:
        return None
    status, detail = document.get("status"), document.get("detail")
    if not isinstance(status, str) or status not in _REPORTABLE:
        return None
    if detail is not None and (not isinstance(detail, str) or len(detail) > _MAX_DETAIL):
        return None
    return DeviceUpdateState(status), detail


def parse_poll(scope: Scope) -> tuple[str, int, str | None] | None:
    """The token, ``wait`` and ``If-None-Match`` of a well-formed poll; ``None`` for anything the
    route should judge (no or another scheme, repeated headers, other query parameters)."""
    query: bytes = scope.get("query_string", b"")
    wait = 0
    if query:
        match = _WAIT.fullmatch(query)
        if match is None or int(match.group(1)) > 60:
            return None
        wait = int(match.group(1))
    token = bearer_token(scope)
    if token is None:
        return None
    if_none_match: str | None = None
    for name, value in scope["headers"]:
        if name == b"if-none-match":
            if if_none_match is not None or len(value) > _MAX_IF_NONE_MATCH:
                return None
            if_none_match = value.decode("latin-1")
    return token, wait, if_none_match


class DeviceFastPath:
    """ASGI middleware: answers well-formed device polls and status reports, passes everything
    else on."""

    def __init__(self, app: ASGIApp, *, state: Any, route: Any = None, report_route: Any = None) -> None:
        self.app = app
        self.state = state
        self.route = route  # the routes' objects, so metrics name the requests by their templates
        self.report_route = report_route
        self._interval: tuple[Any, tuple[bytes, bytes]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "PUT" and scope["path"].endswith("/status"):
            await self._report(scope, receive, send)
            return
        if scope["path"] != POLL_PATH or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        parsed = parse_poll(scope)
        if parsed is None:
            await self.app(scope, receive, send)
            return
        token, wait, if_none_match = parsed
        poller = self.state.device_poller
        try:
            claims = await poller.authenticate(token)
            found = await poller.next_update(claims, wait=wait, if_none_match=if_none_match)
        except Exception:
            # A refused token, a device no longer admitted, a database error: the route answers
            # it again, and renders it as the API does.
            await self.app(scope, receive, send)
            return
        if self.route is not None:
            scope["route"] = self.route
        if found is not None and found.release is not None:  # 200: the instructions, as the route
            await poll_response(self.state, claims.tenant_id, found)(scope, receive, send)
            return
        # 204 and 304 carry no body: the same headers as ``poll_response``'s, without building
        # a Response for them (a test compares both answers).
        interval = self._interval_header()
        if found is None:
            headers = [interval]
            status = 204
        else:
            headers = [interval, (b"etag", found.etag.encode("latin-1"))]
            status = 304
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    async def _report(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = STATUS_PATH.fullmatch(scope["path"])
        token = bearer_token(scope) if match is not None and not scope.get("query_string") else None
        if match is None or token is None:
            await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:  # the guard has read and size-checked the body already: this is its replay
            message = await receive()
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        receive = replay_body(bytes(body), receive)
        parsed = parse_report(bytes(body))
        if parsed is None:
            await self.app(scope, receive, send)
            return
        state, detail = parsed
        try:
            claims = await self.state.device_poller.authenticate(token)
            await self.state.device_reports.record(
                DeviceReport(
                    claims.tenant_id, match.group(1), claims.device_id, state, detail, claims.issued_at
                )
            )
        except Exception:
            # The route answers it again, with its checks and its problem document.
            await self.app(scope, receive, send)
            return
        if self.report_route is not None:
            scope["route"] = self.report_route
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def _interval_header(self) -> tuple[bytes, bytes]:
        seconds = self.state.settings.device_poll_interval_seconds
        if self._interval is None or self._interval[0] != seconds:
            self._interval = (seconds, (b"x-fleetlift-poll-interval", str(seconds).encode()))
        return self._interval[1]
