"""The device poll without the framework's per-request machinery.

``GET /api/device/v1/deployments/next`` is the request a fleet sends most. Routing it through
FastAPI (matching it against every route, solving its dependencies, validating its parameters)
cost more than answering it (docs/benchmarks.md), so this ASGI layer, inside ``RequestGuard``
(request IDs, access log and metrics still apply), answers the well-formed poll itself: a GET
with a bearer token and at most ``wait=<0..60>``. It runs the same poller and renders with the
same function as the route (``routes.poll_response``).

Everything else goes to the application untouched, and so does any poll this layer would refuse
or fail: the route then answers it, with its validation and problem documents. The route stays
the documented operation and the one behaviour; this is only a shorter road to it.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from fleetlift.device_api.routes import poll_response

log = logging.getLogger(__name__)

POLL_PATH = "/api/device/v1/deployments/next"
_WAIT = re.compile(rb"wait=(\d{1,2})")
_MAX_IF_NONE_MATCH = 200  # as the route's header parameter


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
    token: str | None = None
    if_none_match: str | None = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            if token is not None:
                return None
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not credentials:
                return None
            token = credentials
        elif name == b"if-none-match":
            if if_none_match is not None or len(value) > _MAX_IF_NONE_MATCH:
                return None
            if_none_match = value.decode("latin-1")
    if token is None:
        return None
    return token, wait, if_none_match


class PollFastPath:
    """ASGI middleware: answers well-formed device polls, passes everything else on."""

    def __init__(self, app: ASGIApp, *, state: Any, route: Any = None) -> None:
        self.app = app
        self.state = state
        self.route = route  # the route's object, so metrics name the poll by its template
        self._interval: tuple[Any, tuple[bytes, bytes]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != POLL_PATH or scope["method"] != "GET":
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

    def _interval_header(self) -> tuple[bytes, bytes]:
        seconds = self.state.settings.device_poll_interval_seconds
        if self._interval is None or self._interval[0] != seconds:
            self._interval = (seconds, (b"x-fleetlift-poll-interval", str(seconds).encode()))
        return self._interval[1]
