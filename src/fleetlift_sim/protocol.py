"""The device protocol's HTTP calls over one shared client, with every request timed and counted.

A semaphore in front of the client keeps at most ``connections`` requests in flight, so tens of
thousands of devices queue cheaply here instead of inside the connection pool. Long polls are the
exception: each device holds one open, so they bypass the semaphore (the pools are sized for them)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from .stats import FleetStats

DEVICE_API = "/api/device/v1"


class ServerUnavailable(Exception):
    """No usable answer (connection error, timeout, 5xx, 429): back off and try again."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class TokenRejected(Exception):
    """A 401 on a device call: the token expired or was revoked; authenticate again."""


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None  # an HTTP date: rare enough to treat like no hint


class DeviceProtocol:
    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        connections: int,
        stats: FleetStats,
        slots: asyncio.Semaphore | None = None,
    ) -> None:
        self.client = client
        # Shared by every client when long polls enlarge the pools: the limit stays --connections.
        self.slots = slots or asyncio.Semaphore(connections)
        self.stats = stats

    def _check(self, response: httpx.Response, *, token_call: bool) -> httpx.Response:
        status = response.status_code
        # An authentication 401 (pending, refused) is an answer the caller classifies and counts.
        if status >= 400 and (token_call or status != 401):
            self.stats.errors[str(status)] += 1
        if status >= 500 or status == 429:
            raise ServerUnavailable(f"HTTP {status}", _retry_after(response))
        if status == 401 and token_call:
            raise TokenRejected(response.text)
        return response

    async def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        content: bytes | None = None,
        json: Any = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        hold_seconds: float = 0.0,
    ) -> httpx.Response:
        """One request; raises ServerUnavailable or TokenRejected, returns any other answer.
        ``hold_seconds``: a long poll the server may hold that long (no slot taken, a longer
        timeout, not counted in the latency figures)."""
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        if hold_seconds > 0:
            timeout = self.client.timeout
            longer = httpx.Timeout((timeout.read or 30.0) + hold_seconds, connect=timeout.connect, pool=None)
            try:
                response = await self.client.request(
                    method, path, headers=all_headers, params=params, timeout=longer
                )
            except httpx.TransportError as error:
                self.stats.errors[type(error).__name__] += 1
                raise ServerUnavailable(type(error).__name__) from error
            self.stats.requests += 1
            return self._check(response, token_call=token is not None)
        async with self.slots:
            started = time.perf_counter()
            try:
                response = await self.client.request(
                    method, path, content=content, json=json, headers=all_headers, params=params
                )
            except httpx.TransportError as error:
                self.stats.errors[type(error).__name__] += 1
                raise ServerUnavailable(type(error).__name__) from error
            self.stats.record_request(time.perf_counter() - started)
        return self._check(response, token_call=token is not None)

    @asynccontextmanager
    async def stream(self, url: str, *, headers: dict[str, str]) -> AsyncIterator[httpx.Response]:
        """A streamed GET (downloads); holds a connection slot until the body is read."""
        async with self.slots:
            started = time.perf_counter()
            try:
                async with self.client.stream("GET", url, headers=headers) as response:
                    self.stats.record_request(time.perf_counter() - started)
                    yield self._check(response, token_call=False)
            except httpx.TransportError as error:
                self.stats.errors[type(error).__name__] += 1
                raise ServerUnavailable(type(error).__name__) from error

    async def authenticate(self, body: bytes, signature: str) -> httpx.Response:
        self.stats.authentications += 1
        return await self.request(
            "POST",
            f"{DEVICE_API}/authentication",
            content=body,
            headers={"Content-Type": "application/json", "X-Fleetlift-Signature": signature},
        )

    async def next_deployment(self, token: str, etag: str | None, wait: int = 0) -> httpx.Response:
        """The next update; with ``wait`` the server holds the poll until one appears (or ``wait``
        seconds pass)."""
        headers = {"If-None-Match": etag} if etag else None
        response = await self.request(
            "GET",
            f"{DEVICE_API}/deployments/next",
            token=token,
            headers=headers,
            params={"wait": str(wait)} if wait else None,
            hold_seconds=float(wait),
        )
        self.stats.polls[response.status_code] += 1
        return response

    async def report_status(
        self, token: str, deployment_id: str, status: str, detail: str | None
    ) -> httpx.Response:
        response = await self.request(
            "PUT",
            f"{DEVICE_API}/deployments/{deployment_id}/status",
            token=token,
            json={"status": status, "detail": detail},
        )
        if response.status_code < 300:
            self.stats.reports[status] += 1
        return response

    async def upload_log(self, token: str, deployment_id: str, log: str) -> httpx.Response:
        response = await self.request(
            "PUT", f"{DEVICE_API}/deployments/{deployment_id}/log", token=token, json={"log": log}
        )
        if response.status_code < 300:
            self.stats.logs_uploaded += 1
        return response

    async def report_inventory(self, token: str, inventory: dict[str, Any]) -> httpx.Response:
        response = await self.request("PATCH", f"{DEVICE_API}/inventory", token=token, json=inventory)
        if response.status_code < 300:
            self.stats.inventories_sent += 1
        return response

    async def notify(self, token: str, level: str, message: str) -> httpx.Response:
        response = await self.request(
            "POST", f"{DEVICE_API}/notifications", token=token, json={"level": level, "message": message}
        )
        if response.status_code < 300:
            self.stats.notifications_sent += 1
        return response
