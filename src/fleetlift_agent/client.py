"""The device protocol from the device's side (/api/device/v1), over the standard library only.

Authentication is renewed by itself: a token close to its expiry, or one the server refuses, is
replaced by signing a new authentication request."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fleetlift_agent import __version__
from fleetlift_agent.identity import DeviceKey

USER_AGENT = f"fleetlift-agent/{__version__}"

log = logging.getLogger("fleetlift_agent")


class ServerUnavailable(Exception):
    """The server could not be reached or answered 5xx: try again later."""


class NotAdmitted(Exception):
    """The server knows the device but has not accepted it (pending or rejected)."""


class ProtocolError(Exception):
    """The server refused a request for a reason retrying will not fix."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


@dataclass(frozen=True)
class PollAnswer:
    instructions: dict[str, Any] | None  # None: nothing to do (204) or unchanged (304)
    unchanged: bool
    etag: str | None
    poll_interval: int | None


@dataclass(frozen=True)
class AuthSettings:
    identity: dict[str, str]
    device_type: str
    architecture: str
    tenant: str | None = None
    enrollment_token: str | None = None


def _problem_detail(body: bytes) -> str:
    try:
        document = json.loads(body)
    except ValueError:
        return body[:200].decode(errors="replace")
    if isinstance(document, dict):
        return str(document.get("detail") or document.get("title") or document)
    return str(document)


def _token_tenant(token: str) -> str | None:
    """The tenant a device token names (its ``tenant`` claim), read without checking the signature:
    the token came from the server over this connection, and the tenant only names an MQTT topic."""
    try:
        claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    except (IndexError, ValueError):
        return None
    tenant = claims.get("tenant") if isinstance(claims, dict) else None
    return tenant if isinstance(tenant, str) else None


class DeviceClient:
    def __init__(self, server: str, key: DeviceKey, auth: AuthSettings, *, timeout: float = 30) -> None:
        self.server = server.rstrip("/")
        self.key = key
        self.auth = auth
        self.timeout = timeout
        self.device_id: str | None = None
        self.tenant_id: str | None = None  # from the device token, once authenticated
        self._token: str | None = None
        self._token_expires = 0.0
        self._lock = threading.Lock()
        # Told of what the server took, as (kind, fields): kind "report" {deployment_id, status,
        # detail}, "log" {deployment_id, log} or "notification" {level, message}. The IoT Hub
        # channel mirrors them into the device twin and device-to-cloud messages.
        self.observers: list[Callable[[str, dict[str, Any]], None]] = []

    def _send(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(
            self.server + path,
            data=body,
            method=method,
            headers={"User-Agent": USER_AGENT, **(headers or {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as response:
                return response.status, dict(response.headers.items()), response.read()
        except urllib.error.HTTPError as error:
            payload = error.read()
            if error.code >= 500:
                raise ServerUnavailable(f"server error {error.code}: {_problem_detail(payload)}") from None
            return error.code, dict(error.headers.items()), payload
        except (urllib.error.URLError, OSError, TimeoutError) as error:
            raise ServerUnavailable(f"cannot reach {self.server}: {error}") from None

    # --- authentication -------------------------------------------------------------------

    def authenticate(self) -> str:
        """Sign and send the authentication request; the device token on success."""
        document: dict[str, Any] = {
            "identity": self.auth.identity,
            "public_key": self.key.public_pem(),
            "device_type": self.auth.device_type,
            "architecture": self.auth.architecture,
        }
        if self.auth.tenant:
            document["tenant"] = self.auth.tenant
        if self.auth.enrollment_token:
            document["enrollment_token"] = self.auth.enrollment_token
        body = json.dumps(document, separators=(",", ":")).encode()
        status, _, payload = self._send(
            "POST",
            "/api/device/v1/authentication",
            body=body,
            headers={"Content-Type": "application/json", "X-Fleetlift-Signature": self.key.sign(body)},
        )
        if status == 401:
            raise NotAdmitted(_problem_detail(payload))
        if status != 200:
            raise ProtocolError(status, _problem_detail(payload))
        answer = json.loads(payload)
        expires_at = datetime.fromisoformat(str(answer["expires_at"]).replace("Z", "+00:00")).timestamp()
        with self._lock:
            self.device_id = str(answer["device_id"])
            self._token = str(answer["token"])
            self.tenant_id = _token_tenant(self._token) or self.auth.tenant
            # Renew a little before the server would refuse it (clock skew, slow links).
            lifetime = max(expires_at - time.time(), 0)
            self._token_expires = time.monotonic() + lifetime * 0.9
            return self._token

    def _current_token(self) -> str:
        with self._lock:
            token, fresh = self._token, time.monotonic() < self._token_expires
        if token is None or not fresh:
            token = self.authenticate()
        return token

    def _call(
        self,
        method: str,
        path: str,
        *,
        document: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        body = None if document is None else json.dumps(document).encode()
        extra = {"Content-Type": "application/json"} if body is not None else {}
        for attempt in range(2):
            token = self._current_token()
            status, answer_headers, payload = self._send(
                method,
                "/api/device/v1" + path,
                body=body,
                headers={"Authorization": f"Bearer {token}", **extra, **(headers or {})},
                timeout=timeout,
            )
            if status == 401 and attempt == 0:
                with self._lock:  # revoked or expired early: authenticate again, once
                    self._token = None
                continue
            if status == 401:
                raise NotAdmitted(_problem_detail(payload))
            return status, answer_headers, payload
        raise AssertionError("unreachable")

    # --- the protocol ---------------------------------------------------------------------

    def poll(self, etag: str | None = None, wait: int = 0) -> PollAnswer:
        headers = {"If-None-Match": etag} if etag else {}
        status, answer_headers, payload = self._call(
            "GET", f"/deployments/next?wait={wait}", headers=headers, timeout=self.timeout + wait
        )
        lowered = {k.lower(): v for k, v in answer_headers.items()}
        interval_header = lowered.get("x-fleetlift-poll-interval")
        interval = int(interval_header) if interval_header and interval_header.isdigit() else None
        if status == 204:
            return PollAnswer(None, False, None, interval)
        if status == 304:
            return PollAnswer(None, True, etag, interval)
        if status != 200:
            raise ProtocolError(status, _problem_detail(payload))
        return PollAnswer(json.loads(payload), False, lowered.get("etag"), interval)

    def report(self, deployment_id: str, status: str, detail: str | None = None) -> None:
        document: dict[str, Any] = {"status": status}
        if detail:
            document["detail"] = detail[-2000:]
        answer, _, payload = self._call("PUT", f"/deployments/{deployment_id}/status", document=document)
        if answer >= 400 and answer not in (404, 409):
            raise ProtocolError(answer, _problem_detail(payload))
        # 404/409: the deployment is gone or already final on the server; the report is moot.
        self._tell("report", {"deployment_id": deployment_id, "status": status, "detail": detail})

    def _tell(self, kind: str, fields: dict[str, Any]) -> None:
        for observer in self.observers:
            try:
                observer(kind, fields)
            except Exception:  # a side channel never fails the update
                log.exception("an observer of the device client failed")

    def upload_log(self, deployment_id: str, log: str) -> None:
        answer, _, payload = self._call("PUT", f"/deployments/{deployment_id}/log", document={"log": log})
        if answer >= 400 and answer not in (404, 409):
            raise ProtocolError(answer, _problem_detail(payload))
        self._tell("log", {"deployment_id": deployment_id, "log": log})

    def send_inventory(self, inventory: dict[str, Any]) -> None:
        answer, _, payload = self._call("PATCH", "/inventory", document=inventory)
        if answer >= 400:
            raise ProtocolError(answer, _problem_detail(payload))

    def notify(self, level: str, message: str) -> None:
        notification = {"level": level, "message": message[:2000]}
        answer, _, payload = self._call("POST", "/notifications", document=notification)
        if answer >= 400:
            raise ProtocolError(answer, _problem_detail(payload))
        self._tell("notification", notification)

    def absolute(self, url: str) -> str:
        """Download links come relative to the server."""
        return url if "://" in url else self.server + url
