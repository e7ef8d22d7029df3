"""What one simulator run is asked to do (parsed from the command line, validated once)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SimSettings:
    server: str = "http://127.0.0.1:8080"
    devices: int = 100
    prefix: str | None = None  # None: taken from the state file, else random
    device_type: str = "sim-gw"
    architecture: str = "arm64"
    tenant: str | None = None
    enrollment_token: str | None = None
    state_file: Path | None = None
    ramp_seconds: float = 0.0
    poll_interval_seconds: float | None = None  # None: what the server suggests
    poll_jitter: float = 0.1
    long_poll_seconds: int = 0  # 0: plain polls; else the server holds each poll up to this long
    download_files: bool = False
    download_seconds: float = 5.0
    install_seconds: float = 5.0
    reboot_seconds: float = 10.0
    failure_rate: float = 0.0
    # Exactly round(share x devices) devices, chosen with the seed, fail (every update, or only
    # updates to failing_version); None: failures are drawn per update at failure_rate.
    failing_devices: float | None = None
    failing_version: str | None = None
    defer_seconds: float = 0.0  # a soft (not forced) update waits this long before it starts
    rollback_rate: float = 0.0
    notify_rate: float = 0.0
    connections: int = 10
    request_timeout_seconds: float = 30.0
    max_backoff_seconds: float = 60.0
    duration_seconds: float | None = None  # None: until interrupted
    stats_interval_seconds: float = 10.0
    seed: int | None = None
    # Pre-admitted devices: lines of "DEVICE_ID TOKEN"; they never authenticate.
    tokens_file: Path | None = None
    per_device: bool = False  # the summary lists every device's installs and outcomes

    def __post_init__(self) -> None:
        problems = []
        if self.devices < 1:
            problems.append("devices must be at least 1")
        for name in ("failure_rate", "rollback_rate", "notify_rate", "poll_jitter"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name.replace('_', '-')} must be between 0 and 1")
        if self.failing_devices is not None and not 0.0 <= self.failing_devices <= 1.0:
            problems.append("failing-devices must be between 0 and 1")
        if self.failing_version is not None and self.failing_devices is None:
            problems.append("failing-version needs failing-devices")
        if not 0 <= self.long_poll_seconds <= 60:
            problems.append("long-poll must be between 0 and 60 seconds")
        if self.failure_rate + self.rollback_rate > 1.0:
            problems.append("failure-rate + rollback-rate must not exceed 1")
        if self.poll_interval_seconds is not None and self.poll_interval_seconds <= 0:
            problems.append("poll-interval must be positive")
        if self.connections < 1:
            problems.append("connections must be at least 1")
        durations = ("ramp_seconds", "download_seconds", "install_seconds", "reboot_seconds", "defer_seconds")
        for name in durations:
            if getattr(self, name) < 0:
                problems.append(f"{name.replace('_seconds', '').replace('_', '-')} must not be negative")
        if self.max_backoff_seconds < 1:
            problems.append("max-backoff must be at least 1 second")
        if self.duration_seconds is not None and self.duration_seconds <= 0:
            problems.append("duration must be positive")
        if self.prefix is not None and not self.prefix.replace("-", "").isalnum():
            problems.append("prefix may hold only letters, digits and '-'")
        if problems:
            raise ValueError("; ".join(problems))
