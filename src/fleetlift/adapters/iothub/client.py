"""The subset of Azure IoT Hub's service (data-plane) REST API that fleetlift uses, over httpx.

One :class:`IotHubClient` per hub. Every request carries ``api-version`` (:data:`API_VERSION`, pinned here
and nowhere else) and a fresh ``Authorization`` header from an :class:`~.auth.AuthProvider`. 429 and
5xx answers and transport failures are retried with exponential backoff and full jitter, honouring
``Retry-After``; other 4xx answers are not retried. Error answers become :mod:`.errors` classes.

Configuration operations (get, list, create/update, delete, applyConfigurationContent) go through a
:class:`ConfigOperationLimiter`: the hub allows about 20 of them a minute per unit, so fleetlift queues
them in order instead of being throttled, and can tell its callers how long the queue is.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from fleetlift import __version__
from fleetlift.adapters.iothub.auth import AuthProvider, Renewable
from fleetlift.adapters.iothub.errors import (
    IotHubBadGateway,
    IotHubUnavailable,
    Throttled,
    error_from_response,
    retry_after_seconds,
)
from fleetlift.errors import InvalidInput

API_VERSION = "2021-04-12"

log = logging.getLogger("fleetlift.iothub")

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]

# A retry is safe for every request when the hub refused it before doing anything: throttled (429),
# unavailable (503), or a connection that never opened. Other failures may have happened after the
# hub acted, so only requests that mean the same when repeated retry them.
_RETRY_ALWAYS = frozenset({429, 503})
_RETRY_IDEMPOTENT = frozenset({500, 502, 504})
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)

# Documented bounds of a direct method's timeouts, in seconds.
_METHOD_RESPONSE_TIMEOUT = (5, 300)
_METHOD_CONNECT_TIMEOUT = (0, 300)


@dataclass(frozen=True)
class Backoff:
    """Delays between retries: full jitter over ``base * 2**attempt``, capped; ``Retry-After`` wins."""

    base_seconds: float = 0.5
    cap_seconds: float = 30.0
    # A Retry-After longer than this is not waited for: the caller hears Throttled with the figure.
    max_retry_after_seconds: float = 120.0


@dataclass(frozen=True)
class MethodResult:
    """The device's answer to a direct method: its own status code and JSON payload."""

    status: int
    payload: Any


class ConfigOperationLimiter:
    """A first-in, first-out token bucket for the hub's configuration operations.

    Each operation reserves its start time when it arrives (so the order is the order of arrival), at
    most ``burst`` at once and then one every ``60 / per_minute`` seconds. An operation that would wait
    longer than ``max_wait_seconds`` is refused at once with :class:`Throttled`, carrying ``retry_after``,
    ``queue_position`` and ``estimated_wait_seconds``. The limit is per process: replicas each need
    their share of the hub's rate.
    """

    def __init__(
        self,
        per_minute: float = 20,
        *,
        burst: int = 5,
        max_wait_seconds: float | None = 300.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if per_minute <= 0 or burst < 1:
            raise InvalidInput("configuration operations need a positive rate and a burst of at least 1")
        self.per_minute = per_minute
        self._interval = 60.0 / per_minute
        self._tolerance = (burst - 1) * self._interval
        self._max_wait = max_wait_seconds
        self._clock = clock
        self._sleep = sleep
        self._next = -math.inf  # when the bucket is next empty-handed (the "theoretical arrival time")
        self._waiting = 0

    def _start(self, now: float) -> float:
        return max(now, max(self._next, now) - self._tolerance)

    @property
    def waiting(self) -> int:
        """How many operations are queued right now."""
        return self._waiting

    def queue_position(self) -> int:
        """Where an operation arriving now would stand in the queue: 0 when it would start at once."""
        return self._waiting + 1 if self.estimated_wait_seconds() > 0 else 0

    def estimated_wait_seconds(self) -> float:
        """How long an operation arriving now would wait before it is sent."""
        now = self._clock()
        return self._start(now) - now

    async def acquire(self) -> float:
        """Wait for this operation's turn; return how long it waited."""
        now = self._clock()
        wait = self._start(now) - now
        if self._max_wait is not None and wait > self._max_wait:
            raise Throttled(
                f"IoT Hub configuration operations are queued: {self._waiting} waiting, about "
                f"{math.ceil(wait)} s; try again later",
                extra={
                    "retry_after": math.ceil(wait - self._max_wait),
                    "queue_position": self._waiting + 1,
                    "estimated_wait_seconds": round(wait, 3),
                },
            )
        self._next = max(self._next, now) + self._interval
        reserved = self._next
        if wait <= 0:
            return 0.0
        self._waiting += 1
        log.info(
            "iothub configuration operation queued",
            extra={"queue_position": self._waiting, "wait_seconds": round(wait, 3)},
        )
        try:
            await self._sleep(wait)
        except asyncio.CancelledError:
            if self._next == reserved:  # the last reservation gives its slot back; earlier ones cannot
                self._next -= self._interval
            raise
        finally:
            self._waiting -= 1
        return wait


def _segment(value: str, what: str) -> str:
    """One URL path segment: every reserved character escaped (``$edgeAgent`` becomes ``%24edgeAgent``)."""
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"IoT Hub {what} must be a non-empty string")
    return urllib.parse.quote(value, safe="")


def _if_match(etag: str) -> str:
    """``etag`` as an RFC 7232 entity tag, quoted unless it is ``*`` or quoted already."""
    # The hub's JSON carries etags unquoted, but it ignores an unquoted If-Match: the write then goes
    # through unconditionally, or a configuration update is taken for a create and refused with 409.
    if etag == "*" or (len(etag) >= 2 and etag.endswith('"') and etag.startswith(('"', 'W/"'))):
        return etag
    return f'"{etag}"'


class IotHubClient:
    """Async client of one IoT hub's service REST API."""

    def __init__(
        self,
        host_name: str,
        auth: AuthProvider,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        retries: int = 4,
        backoff: Backoff = Backoff(),
        sleep: Sleep = asyncio.sleep,
        rng: Callable[[], float] = random.random,
        config_ops_per_minute: float = 20,
        config_ops_burst: int = 5,
        config_max_wait_seconds: float | None = 300.0,
        clock: Clock = time.monotonic,
        timeout_seconds: float = 30.0,
    ) -> None:
        if not host_name or "/" in host_name:
            raise InvalidInput("IoT Hub host name must be a bare host name such as myhub.azure-devices.net")
        self.host_name = host_name
        self._auth = auth
        self._retries = max(0, retries)
        self._backoff = backoff
        self._sleep = sleep
        self._rng = rng
        self.config_limiter = ConfigOperationLimiter(
            config_ops_per_minute,
            burst=config_ops_burst,
            max_wait_seconds=config_max_wait_seconds,
            clock=clock,
            sleep=sleep,
        )
        self._http = httpx.AsyncClient(
            base_url=f"https://{host_name}",
            transport=transport,
            timeout=httpx.Timeout(timeout_seconds),
            headers={"User-Agent": f"fleetlift/{__version__}", "Accept": "application/json"},
        )

    async def __aenter__(self) -> IotHubClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    def __repr__(self) -> str:
        return f"IotHubClient(host_name={self.host_name!r})"

    # ------------------------------------------------------------------ plumbing

    def _delay(self, attempt: int) -> float:
        ceiling = min(self._backoff.cap_seconds, self._backoff.base_seconds * 2.0**attempt)
        return self._rng() * ceiling

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool = True,
        limited: bool = False,
        timeout: float | None = None,
    ) -> httpx.Response:
        """Send one logical request, with retries; return a 2xx response or raise a fleetlift error."""
        query = {"api-version": API_VERSION, **(params or {})}
        attempt = 0
        renewed = False
        while True:
            if limited:
                await self.config_limiter.acquire()  # every attempt counts against the hub's rate
            request_headers = {**(headers or {}), "Authorization": await self._auth.authorization()}
            started = time.monotonic()
            try:
                response = await self._http.request(
                    method,
                    path,
                    params=query,
                    json=body,
                    headers=request_headers,
                    timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
                )
            except httpx.TransportError as failure:
                # Only the exception's kind: its request carries the Authorization header.
                kind = type(failure).__name__
                if (idempotent or isinstance(failure, _NOT_SENT)) and attempt < self._retries:
                    delay = self._delay(attempt)
                    log.warning(
                        "iothub request failed, retrying",
                        extra={
                            "method": method,
                            "path": path,
                            "error": kind,
                            "attempt": attempt + 1,
                            "delay_seconds": round(delay, 3),
                        },
                    )
                    await self._sleep(delay)
                    attempt += 1
                    continue
                raise IotHubUnavailable(f"IoT Hub {self.host_name} could not be reached ({kind})") from None
            status = response.status_code
            log.debug(
                "iothub request",
                extra={
                    "method": method,
                    "path": path,
                    "status": status,
                    "attempt": attempt + 1,
                    "elapsed_ms": round((time.monotonic() - started) * 1000, 1),
                },
            )
            if status < 400:
                return response
            if status == 401 and not renewed and isinstance(self._auth, Renewable):
                # A token the hub already considers expired (clock skew): one more try with a new one.
                self._auth.invalidate()
                renewed = True
                continue
            error = error_from_response(status, response.headers, response.content)
            retryable = status in _RETRY_ALWAYS or (idempotent and status in _RETRY_IDEMPOTENT)
            if not retryable or attempt >= self._retries:
                raise error
            hinted = retry_after_seconds(response.headers)
            if hinted is not None and hinted > self._backoff.max_retry_after_seconds:
                raise error
            delay = hinted if hinted is not None else self._delay(attempt)
            log.warning(
                "iothub answered %s, retrying",
                status,
                extra={
                    "method": method,
                    "path": path,
                    "status": status,
                    "hub_code": error.hub_code,
                    "attempt": attempt + 1,
                    "delay_seconds": round(delay, 3),
                },
            )
            await self._sleep(delay)
            attempt += 1

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        try:
            return response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise IotHubBadGateway(
                f"IoT Hub answered {response.status_code} with a body that is not JSON",
                hub_status=response.status_code,
            ) from None

    def _object(self, response: httpx.Response) -> dict[str, Any]:
        document = self._json(response)
        if not isinstance(document, dict):
            raise IotHubBadGateway("IoT Hub answered with a JSON value where an object was expected")
        return document

    def _array(self, response: httpx.Response) -> list[Any]:
        document = self._json(response)
        if not isinstance(document, list):
            raise IotHubBadGateway("IoT Hub answered with a JSON value where an array was expected")
        return document

    # ------------------------------------------------------------------ twins and queries

    async def query_twins(self, query: str, *, page_size: int = 100) -> AsyncIterator[dict[str, Any]]:
        """Every result of an IoT Hub query (``SELECT * FROM devices WHERE ...``), page after page."""
        if page_size < 1:
            raise InvalidInput("query page size must be at least 1")
        continuation: str | None = None
        while True:
            headers = {"x-ms-max-item-count": str(page_size)}
            if continuation:
                headers["x-ms-continuation"] = continuation
            response = await self._request("POST", "/devices/query", body={"query": query}, headers=headers)
            page = self._array(response)
            for item in page:
                if isinstance(item, dict):
                    yield item
            following = response.headers.get("x-ms-continuation") or None
            if following is None:
                return
            if following == continuation and not page:
                raise IotHubBadGateway("IoT Hub repeated a continuation token with an empty page")
            continuation = following

    async def get_twin(self, device_id: str) -> dict[str, Any]:
        """The device's twin (tags, desired and reported properties, etag)."""
        response = await self._request("GET", f"/twins/{_segment(device_id, 'device ID')}")
        return self._object(response)

    async def update_twin(
        self, device_id: str, patch: Mapping[str, Any], *, etag: str | None = None
    ) -> dict[str, Any]:
        """Merge ``patch`` (tags, ``properties.desired``) into the twin; ``etag`` makes it conditional."""
        headers = {"If-Match": _if_match(etag)} if etag else None
        response = await self._request(
            "PATCH",
            f"/twins/{_segment(device_id, 'device ID')}",
            body=dict(patch),
            headers=headers,
            idempotent=etag is None,  # a replayed conditional write would meet its own new ETag
        )
        return self._object(response)

    async def get_module_twin(self, device_id: str, module_id: str) -> dict[str, Any]:
        """A module's twin, e.g. ``$edgeAgent`` of an IoT Edge device."""
        path = f"/twins/{_segment(device_id, 'device ID')}/modules/{_segment(module_id, 'module ID')}"
        return self._object(await self._request("GET", path))

    # ------------------------------------------------------------------ configurations

    async def get_configuration(self, configuration_id: str) -> dict[str, Any]:
        """One configuration (deployment) with its live system metrics."""
        response = await self._request(
            "GET", f"/configurations/{_segment(configuration_id, 'configuration ID')}", limited=True
        )
        return self._object(response)

    async def list_configurations(self, *, top: int | None = None) -> list[dict[str, Any]]:
        """The hub's configurations (at most ``top``)."""
        params: dict[str, str] = {}
        if top is not None:
            if top < 1:
                raise InvalidInput("top must be at least 1")
            params["top"] = str(top)
        response = await self._request("GET", "/configurations", params=params, limited=True)
        return [item for item in self._array(response) if isinstance(item, dict)]

    async def put_configuration(
        self, configuration: Mapping[str, Any], *, etag: str | None = None
    ) -> dict[str, Any]:
        """Create the configuration (no ``etag``) or update its labels, priority, condition and metrics."""
        configuration_id = configuration.get("id")
        if not isinstance(configuration_id, str):
            raise InvalidInput("an IoT Hub configuration needs a string id")
        response = await self._request(
            "PUT",
            f"/configurations/{_segment(configuration_id, 'configuration ID')}",
            body=dict(configuration),
            headers={"If-Match": _if_match(etag)} if etag else None,
            # Replayed after an unclear failure, a create meets 409 and an update 412: not retried then.
            idempotent=False,
            limited=True,
        )
        return self._object(response)

    async def delete_configuration(self, configuration_id: str, *, etag: str | None = None) -> None:
        """Delete the configuration; without ``etag`` unconditionally (``If-Match: *``)."""
        await self._request(
            "DELETE",
            f"/configurations/{_segment(configuration_id, 'configuration ID')}",
            headers={"If-Match": _if_match(etag) if etag else "*"},
            idempotent=etag is None,
            limited=True,
        )

    async def apply_configuration_content(self, device_id: str, content: Mapping[str, Any]) -> None:
        """Apply deployment content (``modulesContent``) to one IoT Edge device directly."""
        await self._request(
            "POST",
            f"/devices/{_segment(device_id, 'device ID')}/applyConfigurationContent",
            body=dict(content),
            limited=True,
        )

    # ------------------------------------------------------------------ direct methods

    async def invoke_method(
        self,
        device_id: str,
        method_name: str,
        payload: Mapping[str, Any],
        *,
        response_timeout: int = 30,
        connect_timeout: int = 0,
    ) -> MethodResult:
        """Call a direct method on a connected device; :class:`.errors.DeviceNotOnline` when it is not."""
        if not method_name:
            raise InvalidInput("a direct method needs a name")
        low, high = _METHOD_RESPONSE_TIMEOUT
        if not low <= response_timeout <= high:
            raise InvalidInput(f"direct method response timeout must be {low}..{high} seconds")
        low, high = _METHOD_CONNECT_TIMEOUT
        if not low <= connect_timeout <= high:
            raise InvalidInput(f"direct method connect timeout must be {low}..{high} seconds")
        body = {
            "methodName": method_name,
            "payload": dict(payload),
            "responseTimeoutInSeconds": response_timeout,
            "connectTimeoutInSeconds": connect_timeout,
        }
        response = await self._request(
            "POST",
            f"/twins/{_segment(device_id, 'device ID')}/methods",
            body=body,
            idempotent=False,  # the device may have run the method even when its answer got lost
            # The hub holds the request open while it waits for the device: wait a little longer.
            timeout=connect_timeout + response_timeout + 15.0,
        )
        result = self._object(response)
        status = result.get("status")
        if not isinstance(status, int) or isinstance(status, bool):
            raise IotHubBadGateway("IoT Hub's direct method result has no integer status")
        return MethodResult(status=status, payload=result.get("payload"))
