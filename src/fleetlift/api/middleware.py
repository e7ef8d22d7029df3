"""ASGI middleware: request IDs, access logs and metrics, body size and content-type guards."""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleetlift.api.common import PROBLEM_MEDIA_TYPE
from fleetlift.ids import new_id

access_log = logging.getLogger("fleetlift.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
_BODY_METHODS = {"POST", "PUT", "PATCH"}


class RequestMetrics:
    """The HTTP metrics of one app, in the app's own registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "fleetlift_http_requests",
            "HTTP requests answered",
            ["method", "route", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "fleetlift_http_request_duration_seconds",
            "Time to answer HTTP requests",
            ["method", "route"],
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )


async def _send_problem(send: Send, status: int, title: str, detail: str, request_id: str) -> None:
    body = json.dumps(
        {
            "type": f"urn:fleetlift:problem:{title.lower().replace(' ', '-')}",
            "title": title,
            "status": status,
            "detail": detail,
            "request_id": request_id,
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", request_id.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def replay_body(body: bytes, receive: Receive) -> Receive:
    """A receive channel that hands out ``body`` once, then whatever the client sends next."""
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class RequestGuard:
    """Gives each request an ID, refuses oversized and non-JSON bodies, logs and measures."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        metrics: RequestMetrics,
        json_prefix: str,
        streaming_paths: frozenset[str] = frozenset(),
        also_guarded: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.guarded = (json_prefix, *also_guarded)
        self.streaming_paths = streaming_paths
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self.json_prefix = json_prefix
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        path: str = scope["path"]
        checks_body = (
            method in _BODY_METHODS and path.startswith(self.guarded) and path not in self.streaming_paths
        )
        if checks_body:
            headers = {
                key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]
            }
            incoming = headers.get("x-request-id", "")
        else:  # most requests (every device poll): only the request ID is read
            incoming = ""
            for key, value in scope["headers"]:
                if key.lower() == b"x-request-id":
                    incoming = value.decode("latin-1")
        request_id = incoming if _REQUEST_ID.match(incoming) else new_id("req_")
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status_holder: dict[str, Any] = {"status": 500}

        async def send_problem(status: int, title: str, detail: str) -> None:
            await _send_problem(send, status, title, detail, request_id)
            self._observe(scope, method, status, started, request_id)

        async def too_large() -> None:
            await send_problem(413, "Request body too large", f"the body exceeds {self.max_body_bytes} bytes")

        # Streaming uploads (artifacts) carry their own media type and size limit.
        if checks_body:
            length = headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
                await too_large()
                return
            content_type = headers.get("content-type", "").split(";")[0].strip().lower()
            has_body = (length is not None and length != "0") or "transfer-encoding" in headers
            if has_body and not (content_type == "application/json" or content_type.endswith("+json")):
                await send_problem(
                    415,
                    "Unsupported media type",
                    f"send the body as application/json, not '{content_type or 'nothing'}'",
                )
                return

            # JSON bodies are parsed in memory anyway: read them here, so a chunked body that
            # grows past the limit is refused with 413 before the app sees a byte of it.
            body = bytearray()
            more = True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    break
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > self.max_body_bytes:
                    await too_large()
                    return
            receive = replay_body(bytes(body), receive)

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        await self.app(scope, receive, tracking_send)
        self._observe(scope, method, status_holder["status"], started, request_id)

    def _observe(self, scope: Scope, method: str, status: int, started: float, request_id: str) -> None:
        elapsed = time.perf_counter() - started
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        if (
            route is not None
            and scope["path"].startswith(self.json_prefix)
            and not template.startswith("/api/")
        ):
            # Routes of included routers report their path without the prefix they are mounted at.
            template = self.json_prefix + template
        children = self._children.get((method, template, status))
        if children is None:  # the labelled series, looked up once per (method, route, status)
            children = (
                self.metrics.requests.labels(method, template, str(status)),
                self.metrics.duration.labels(method, template),
            )
            self._children[(method, template, status)] = children
        children[0].inc()
        children[1].observe(elapsed)
        if not access_log.isEnabledFor(logging.INFO):
            return
        access_log.info(
            "%s %s %s",
            method,
            scope["path"],
            status,
            extra={
                "request_id": request_id,
                "method": method,
                "path": scope["path"],
                "status": status,
                "duration_ms": round(elapsed * 1000, 2),
                "subject": scope.get("state", {}).get("subject"),
            },
        )
