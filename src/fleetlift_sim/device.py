"""One virtual device: authenticate (waiting while pending) or use a token handed to it, poll at
the suggested interval with jitter and ETags (or long-poll), walk an offered update through the
reports a real agent sends, back off when the server does not answer. Installers are simulated;
downloads are simulated or real (with Range). Each device keeps count of the updates it started
per deployment, so a run can show that none was installed twice."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx

from .identities import SimIdentity
from .protocol import DeviceProtocol, ServerUnavailable, TokenRejected
from .settings import SimSettings
from .stats import DeviceState, FleetStats

T = TypeVar("T")

DEFAULT_POLL_INTERVAL_SECONDS = 60.0
# Renew a device token when this share of its lifetime has passed.
TOKEN_RENEWAL_POINT = 0.8
DOWNLOAD_RETRIES = 5
FAILING_STEPS = ("downloading", "installing", "verifying")
FAILURES = frozenset({"failed", "rolled_back"})
# The poll answers' states that mean "start (again)": the server released the device, or retried it.
FRESH_STATES = frozenset({"pending", "notified"})
FAILURE_REASONS = {
    "downloading": "download interrupted: connection reset by peer",
    "installing": "installer exited with status 1: dependency conflict",
    "verifying": "verification failed: service did not come up within 60 s",
}
NOTIFICATIONS = (
    ("info", "cpu temperature 61 C"),
    ("info", "uplink switched to LTE"),
    ("warning", "disk 83% full on /data"),
    ("warning", "modem signal weak (-101 dBm)"),
    ("critical", "watchdog reset after a kernel hang"),
)
NOTIFICATION_WEIGHTS = (40, 40, 8, 8, 4)


@dataclass(frozen=True, slots=True)
class FleetContext:
    """What every device of one run shares."""

    settings: SimSettings
    stats: FleetStats
    rng: random.Random


class UpdateAbandoned(Exception):
    """The server refused a report (the deployment was cancelled or is not this device's)."""


class DownloadFailed(Exception):
    pass


class UpdateLog:
    """The lines a device would upload about one update."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, message: str) -> None:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        self.lines.append(f"{stamp} {message}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


class VirtualDevice:
    __slots__ = (
        "auth_request",
        "device_id",
        "etag",
        "fails",
        "failures",
        "finished",
        "fixed_token",
        "fleet",
        "identity",
        "installs",
        "offer",
        "outcomes",
        "protocol",
        "reoffers",
        "reported_inventory",
        "server_poll_interval",
        "state",
        "token",
        "token_renew_at",
        "token_valid_until",
    )

    def __init__(
        self,
        identity: SimIdentity,
        fleet: FleetContext,
        protocol: DeviceProtocol,
        *,
        token: tuple[str, str] | None = None,
        fails: bool = False,
    ) -> None:
        self.identity = identity
        self.fleet = fleet
        self.protocol = protocol
        self.state = DeviceState.STARTING
        fleet.stats.move(None, self.state)
        self.auth_request: tuple[bytes, str] | None = None  # signed on first use, then reused
        # A pre-admitted device (--tokens-file): its ID and token, never renewed.
        self.fixed_token = token
        self.device_id: str | None = None if token is None else token[0]
        self.fails = fails  # one of the devices --failing-devices chose
        self.token: str | None = None if token is None else token[1]
        self.token_renew_at = float("inf") if token is not None else 0.0
        self.token_valid_until = float("inf") if token is not None else 0.0
        self.etag: str | None = None
        self.offer: dict[str, Any] | None = None
        self.server_poll_interval = DEFAULT_POLL_INTERVAL_SECONDS
        self.failures = 0
        self.finished: set[str] = set()  # deployments this device reported an outcome for
        self.installs: Counter[str] = Counter()  # updates started, per deployment
        self.outcomes: dict[str, str] = {}  # the last outcome reported, per deployment
        self.reoffers: Counter[str] = Counter()  # offers of a deployment after its success
        # A pre-admitted device is one the server knows already: no inventory at start (it still
        # reports one after each update it installs).
        self.reported_inventory = token is not None

    @property
    def key(self) -> str:
        """How the summary names this device: the server's device ID once known, else its serial."""
        return self.device_id or self.identity.serial

    def record(self) -> dict[str, Any]:
        """What this device did, for the per-device summary."""
        return {
            "serial": self.identity.serial,
            "installs": dict(self.installs),
            "outcomes": dict(self.outcomes),
            "reoffers": dict(self.reoffers),
            "installed": dict(self.identity.installed),
        }

    # -- the main loop -----------------------------------------------------------------------

    async def run(self, start_delay: float) -> None:
        """Live until cancelled."""
        await asyncio.sleep(start_delay)
        first_poll = True
        while True:
            if not self.reported_inventory:
                await self._call(self._send_inventory)
                self.reported_inventory = True
            asked = time.monotonic()
            offer = await self._call(self._poll)
            if offer is not None:
                await self._update(offer)
            if self.fleet.rng.random() < self.fleet.settings.notify_rate:
                await self._call(self._send_notification)
            await asyncio.sleep(self._poll_delay(first_poll, held=time.monotonic() - asked))
            first_poll = False

    def _poll_delay(self, first_poll: bool, held: float = 0.0) -> float:
        settings = self.fleet.settings
        interval = settings.poll_interval_seconds or self.server_poll_interval
        if settings.long_poll_seconds and held >= 1.0:
            # The server held the poll (or an update ran): ask again at once, slightly spread.
            return self.fleet.rng.uniform(0.0, 0.2)
        if first_poll:
            # Spread the fleet evenly over one interval, however it started.
            return self.fleet.rng.uniform(0.0, interval)
        return interval * self.fleet.rng.uniform(1.0 - settings.poll_jitter, 1.0 + settings.poll_jitter)

    def _move_to(self, state: DeviceState) -> None:
        if state is not self.state:
            self.fleet.stats.move(self.state, state)
            self.state = state

    async def _back_off(self, hint: float | None = None) -> None:
        """Exponential backoff with jitter, capped; a server's Retry-After wins."""
        self.failures += 1
        cap = self.fleet.settings.max_backoff_seconds
        if hint is not None:
            delay = min(hint, cap) * self.fleet.rng.uniform(1.0, 1.2)
        else:
            ceiling = min(cap, 2.0 ** min(self.failures, 20))
            delay = self.fleet.rng.uniform(ceiling / 2, ceiling)
        await asyncio.sleep(delay)

    async def _call(self, operation: Callable[[str], Awaitable[T]]) -> T:
        """Run one device-protocol call with a valid token, renewing it and riding out outages."""
        while True:
            token = await self._token()
            try:
                result = await operation(token)
            except TokenRejected:
                if self.fixed_token is not None:  # nothing to renew it with: wait and try again
                    self.fleet.stats.errors["401"] += 1
                    self._move_to(DeviceState.REFUSED)
                    await self._back_off()
                    continue
                self.token = None
                if self.failures:  # rejected again right after renewing: do not hammer
                    await self._back_off()
                else:
                    self.failures = 1
                continue
            except ServerUnavailable as problem:
                self._move_to(DeviceState.UNREACHABLE)
                await self._back_off(problem.retry_after)
                continue
            self.failures = 0
            self._move_to(DeviceState.AUTHENTICATED)
            return result

    # -- authentication ----------------------------------------------------------------------

    async def _token(self) -> str:
        while self.token is None or time.monotonic() >= self.token_renew_at:
            if self.auth_request is None:
                settings = self.fleet.settings
                self.auth_request = self.identity.signed_auth_request(
                    device_type=settings.device_type,
                    architecture=settings.architecture,
                    tenant=settings.tenant,
                    enrollment_token=settings.enrollment_token,
                )
            body, signature = self.auth_request
            try:
                answer = await self.protocol.authenticate(body, signature)
            except ServerUnavailable as problem:
                if self.token is not None and time.monotonic() < self.token_valid_until:
                    self.token_renew_at = time.monotonic() + 30.0  # the old token still works
                    break
                self._move_to(DeviceState.UNREACHABLE)
                await self._back_off(problem.retry_after)
                continue
            if answer.status_code == 200:
                self._accept_token(answer)
                self._move_to(DeviceState.AUTHENTICATED)
                break
            self.token = None
            if answer.status_code == 401 and _admission(answer) == "pending":
                self._move_to(DeviceState.PENDING)
            else:
                if answer.status_code == 401:
                    self.fleet.stats.errors["401"] += 1
                self._move_to(DeviceState.REFUSED)
            await self._back_off()
        assert self.token is not None
        return self.token

    def _accept_token(self, answer: httpx.Response) -> None:
        document = answer.json()
        self.token = str(document["token"])
        if document.get("device_id"):
            self.device_id = str(document["device_id"])
        lifetime = 300.0
        try:
            expires_at = datetime.fromisoformat(str(document["expires_at"]).replace("Z", "+00:00"))
            if expires_at.tzinfo is None:
                expires_at = expires_at.replace(tzinfo=UTC)
            lifetime = (expires_at - datetime.now(UTC)).total_seconds()
        except (KeyError, ValueError):
            pass
        if lifetime <= 0:  # a clock far off ours: rely on the 401 that will come
            lifetime = 300.0
        now = time.monotonic()
        self.token_valid_until = now + lifetime
        self.token_renew_at = now + lifetime * TOKEN_RENEWAL_POINT

    # -- polling -----------------------------------------------------------------------------

    async def _poll(self, token: str) -> dict[str, Any] | None:
        answer = await self.protocol.next_deployment(token, self.etag, self.fleet.settings.long_poll_seconds)
        suggested = answer.headers.get("X-Fleetlift-Poll-Interval")
        if suggested is not None:
            with contextlib.suppress(ValueError):
                self.server_poll_interval = max(float(suggested), 0.1)
        if answer.status_code == 200:
            self.offer = dict(answer.json())
            self.etag = answer.headers.get("ETag")
            return self.offer
        if answer.status_code == 304 and self.offer is not None:
            return self.offer
        self.etag = None
        self.offer = None
        return None

    # -- an update ---------------------------------------------------------------------------

    async def _update(self, offer: dict[str, Any]) -> None:
        deployment_id = str(offer["deployment_id"])
        stats = self.fleet.stats
        if deployment_id in self.finished:
            retried = self.outcomes.get(deployment_id) in FAILURES and offer.get("state") in FRESH_STATES
            if not retried:
                if self.outcomes.get(deployment_id) == "succeeded" and offer.get("state") in FRESH_STATES:
                    self.reoffers[deployment_id] += 1  # released again after it succeeded
                    stats.updates["reoffered"] += 1
                return  # an answer about an outcome already reported
            self.finished.discard(deployment_id)
            stats.updates["retried"] += 1
        stats.updates["offered"] += 1
        release = offer.get("release") or {}
        name, version = str(release.get("name", "")), str(release.get("version", ""))
        if offer.get("forced"):
            stats.updates["forced"] += 1
        elif self.fleet.settings.defer_seconds > 0:
            stats.updates["deferred"] += 1  # soft: the hosting application puts it off a while
            await self._pause(self.fleet.settings.defer_seconds)
        log = UpdateLog()
        try:
            if name and self.identity.installed.get(name) == version:
                await self._report(deployment_id, "already_installed", f"{name} {version} is installed", log)
                stats.updates["already_installed"] += 1
                self.outcomes[deployment_id] = "already_installed"
            else:
                await self._install(deployment_id, offer, log)
        except UpdateAbandoned:
            stats.updates["abandoned"] += 1
        self.finished.add(deployment_id)

    def _choose_outcome(self, version: str) -> tuple[str, str | None]:
        """``succeeded``, ``rolled_back`` or ``failed`` (with the step that fails)."""
        settings = self.fleet.settings
        if self.fails and settings.failing_version in (None, version):
            return "failed", self.fleet.rng.choice(FAILING_STEPS)
        draw = self.fleet.rng.random()
        if draw < settings.failure_rate:
            return "failed", self.fleet.rng.choice(FAILING_STEPS)
        if draw < settings.failure_rate + settings.rollback_rate:
            return "rolled_back", None
        return "succeeded", None

    async def _pause(self, seconds: float) -> None:
        if seconds > 0:
            await asyncio.sleep(seconds * self.fleet.rng.uniform(0.5, 1.5))

    async def _install(self, deployment_id: str, offer: dict[str, Any], log: UpdateLog) -> None:
        settings = self.fleet.settings
        release = offer.get("release") or {}
        name, version = str(release.get("name", "")), str(release.get("version", ""))
        files: list[dict[str, Any]] = list(offer.get("files") or [])
        outcome, failing_step = self._choose_outcome(version)
        self.installs[deployment_id] += 1
        log.add(f"update to {name} {version} ({release.get('kind', 'patch')}) for deployment {deployment_id}")

        total = sum(int(file.get("size", 0)) for file in files)
        await self._report(deployment_id, "downloading", f"{len(files)} files, {total} bytes", log)
        if settings.download_files:
            try:
                for file in files:
                    await self._download(file, log)
            except DownloadFailed as failure:
                await self._fail(deployment_id, "failed", str(failure), log)
                return
        else:
            await self._pause(settings.download_seconds)
        if failing_step == "downloading":
            await self._fail(deployment_id, "failed", FAILURE_REASONS["downloading"], log)
            return
        await self._report(deployment_id, "downloaded", None, log)

        await self._report(deployment_id, "installing", None, log)
        await self._pause(settings.install_seconds)
        if failing_step == "installing":
            await self._fail(deployment_id, "failed", FAILURE_REASONS["installing"], log)
            return
        if release.get("kind") == "base":
            await self._report(deployment_id, "rebooting", None, log)
            await self._pause(settings.reboot_seconds)

        await self._report(deployment_id, "verifying", None, log)
        await self._pause(settings.install_seconds / 5)
        if outcome == "rolled_back":
            reason = "health check failed after the update; rolled back to the previous version"
            await self._fail(deployment_id, "rolled_back", reason, log)
            return
        if failing_step == "verifying":
            await self._fail(deployment_id, "failed", FAILURE_REASONS["verifying"], log)
            return

        await self._report(deployment_id, "succeeded", f"{name} {version} installed", log)
        self.fleet.stats.updates["succeeded"] += 1
        if name:
            self.identity.installed[name] = version
        self.outcomes[deployment_id] = "succeeded"
        await self._call(self._send_inventory)

    async def _report(
        self, deployment_id: str, status: str, detail: str | None, log: UpdateLog, *, logged: bool = False
    ) -> None:
        if not logged:
            log.add(status if detail is None else f"{status}: {detail}")
        protocol = self.protocol

        async def send(token: str) -> httpx.Response:
            return await protocol.report_status(token, deployment_id, status, detail)

        answer = await self._call(send)
        if answer.status_code >= 400:
            log.add(f"the server refused the report: HTTP {answer.status_code}")
            raise UpdateAbandoned(f"HTTP {answer.status_code} on {status}")

    async def _fail(self, deployment_id: str, status: str, reason: str, log: UpdateLog) -> None:
        """Upload the log that explains a failure or rollback, then report it: whoever sees the
        outcome can already read why."""
        log.add(f"{status}: {reason}")
        protocol = self.protocol
        text = log.text()

        async def upload(token: str) -> httpx.Response:
            return await protocol.upload_log(token, deployment_id, text)

        await self._call(upload)
        await self._report(deployment_id, status, reason, log, logged=True)
        self.fleet.stats.updates[status] += 1
        self.outcomes[deployment_id] = status

    async def _download(self, file: dict[str, Any], log: UpdateLog) -> None:
        """Fetch one file through its signed link, resuming with Range after an interruption, and
        check its SHA-256. The bytes are hashed, never stored."""
        filename = str(file.get("filename", "file"))
        size = int(file["size"])
        digest = hashlib.sha256()
        received = 0
        interruptions = 0
        while True:
            headers = {"Range": f"bytes={received}-"} if received else {}
            try:
                async with self.protocol.stream(str(file["url"]), headers=headers) as answer:
                    if answer.status_code == 200 and received:
                        log.add(f"{filename}: the server ignored Range, starting over")
                        digest, received = hashlib.sha256(), 0
                    elif answer.status_code not in (200, 206):
                        raise DownloadFailed(f"download of {filename} refused: HTTP {answer.status_code}")
                    async for chunk in answer.aiter_bytes():
                        digest.update(chunk)
                        received += len(chunk)
                        self.fleet.stats.bytes_downloaded += len(chunk)
                break
            except ServerUnavailable as problem:
                interruptions += 1
                log.add(f"{filename}: interrupted at {received} of {size} bytes ({problem})")
                if interruptions > DOWNLOAD_RETRIES:
                    raise DownloadFailed(f"download of {filename} failed {interruptions} times") from None
                await self._back_off(problem.retry_after)
        if received != size or digest.hexdigest() != file.get("sha256"):
            raise DownloadFailed(f"{filename}: checksum mismatch ({received} of {size} bytes)")
        log.add(f"{filename}: {size} bytes, sha256 verified")

    # -- inventory and notifications ---------------------------------------------------------

    async def _send_inventory(self, token: str) -> httpx.Response:
        settings = self.fleet.settings
        return await self.protocol.report_inventory(
            token,
            {
                "agent_version": "sim",
                "device_type": settings.device_type,
                "architecture": settings.architecture,
                "os": "fleetlift-sim",
                "serial": self.identity.serial,
                "installed_releases": dict(self.identity.installed),
            },
        )

    async def _send_notification(self, token: str) -> httpx.Response:
        level, message = self.fleet.rng.choices(NOTIFICATIONS, weights=NOTIFICATION_WEIGHTS)[0]
        return await self.protocol.notify(token, level, message)


def _admission(answer: httpx.Response) -> str | None:
    try:
        document = answer.json()
    except ValueError:
        return None
    admission = document.get("admission") if isinstance(document, dict) else None
    return admission if isinstance(admission, str) else None
