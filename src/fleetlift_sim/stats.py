"""What the simulator measures: device admission, polls, reports, update outcomes, HTTP errors and
request latency, plus the simulator's own CPU and memory, as a compact line or a JSON document."""

from __future__ import annotations

import math
import resource
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class DeviceState(StrEnum):
    STARTING = "starting"  # waiting for its turn in the ramp-up
    AUTHENTICATED = "authenticated"  # holds a device token
    PENDING = "pending"  # known to the server, waiting for an operator
    REFUSED = "refused"  # rejected, or the enrollment token / key was not accepted
    UNREACHABLE = "unreachable"  # backing off after the server did not answer


class LatencyHistogram:
    """Latencies in logarithmic buckets 5% wide: constant memory at any request count, percentiles
    accurate to within a bucket."""

    GROWTH = 1.05
    SMALLEST_MS = 0.05

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()
        self.total = 0

    def add(self, seconds: float) -> None:
        milliseconds = max(seconds * 1000.0, self.SMALLEST_MS)
        self.counts[int(math.log(milliseconds / self.SMALLEST_MS, self.GROWTH))] += 1
        self.total += 1

    def percentile_ms(self, fraction: float) -> float | None:
        """The latency below which ``fraction`` of the requests fall (bucket midpoint), in ms."""
        if self.total == 0:
            return None
        wanted = fraction * self.total
        seen = 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen >= wanted:
                midpoint: float = self.SMALLEST_MS * self.GROWTH ** (bucket + 0.5)
                return round(midpoint, 2)
        return None  # unreachable: the counts add up to total


@dataclass
class FleetStats:
    """Counters the devices update as they go; never reset (rates come from differences)."""

    started_at: float = field(default_factory=time.monotonic)
    devices: Counter[DeviceState] = field(default_factory=Counter)
    requests: int = 0
    polls: Counter[int] = field(default_factory=Counter)  # by status code: 200, 204, 304
    reports: Counter[str] = field(default_factory=Counter)  # by reported status
    updates: Counter[str] = field(default_factory=Counter)  # offered, succeeded, failed, ...
    errors: Counter[str] = field(default_factory=Counter)  # HTTP status or transport error name
    authentications: int = 0
    logs_uploaded: int = 0
    inventories_sent: int = 0
    notifications_sent: int = 0
    bytes_downloaded: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    window_latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def move(self, old: DeviceState | None, new: DeviceState) -> None:
        if old is not None:
            self.devices[old] -= 1
        self.devices[new] += 1

    def record_request(self, seconds: float) -> None:
        self.requests += 1
        self.latency.add(seconds)
        self.window_latency.add(seconds)

    def snapshot(
        self, *, window_seconds: float | None = None, previous: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Everything so far as plain data. With ``previous`` (an earlier snapshot) the rates and
        latency describe the time since then; otherwise the whole run."""
        elapsed = time.monotonic() - self.started_at
        polls = sum(self.polls.values())
        span = elapsed if previous is None else max(elapsed - float(previous["elapsed_seconds"]), 1e-9)
        polls_in_span = polls - (0 if previous is None else int(previous["polls"]["total"]))
        latency = self.latency if previous is None else self.window_latency
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu_seconds = usage.ru_utime + usage.ru_stime
        cpu_in_span = cpu_seconds - (0.0 if previous is None else float(previous["process"]["cpu_seconds"]))
        # ru_maxrss is KiB on Linux, bytes on macOS
        max_rss_mb = usage.ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)
        return {
            "elapsed_seconds": round(elapsed, 1),
            "devices": {state.value: self.devices[state] for state in DeviceState},
            "requests": self.requests,
            "authentications": self.authentications,
            "polls": {
                "total": polls,
                "per_second": round(polls_in_span / span, 1),
                "updates": self.polls[200],
                "no_update": self.polls[204],
                "not_modified": self.polls[304],
                "not_modified_ratio": round(self.polls[304] / polls, 3) if polls else 0.0,
            },
            "reports": {"total": sum(self.reports.values()), **dict(sorted(self.reports.items()))},
            "updates": dict(sorted(self.updates.items())),
            "errors": dict(sorted(self.errors.items())),
            "logs_uploaded": self.logs_uploaded,
            "inventories_sent": self.inventories_sent,
            "notifications_sent": self.notifications_sent,
            "bytes_downloaded": self.bytes_downloaded,
            "latency_ms": {"p50": latency.percentile_ms(0.5), "p99": latency.percentile_ms(0.99)},
            "process": {
                "cpu_seconds": round(cpu_seconds, 2),
                "cpu_percent": round(100.0 * cpu_in_span / span, 1),
                "max_rss_mb": round(max_rss_mb, 1),
            },
        }

    def start_window(self) -> None:
        self.window_latency = LatencyHistogram()


def _milliseconds(value: float | None) -> str:
    return "-" if value is None else f"{value:g}ms"


def summary_line(snapshot: dict[str, Any]) -> str:
    """One compact line for a terminal."""
    devices = snapshot["devices"]
    polls = snapshot["polls"]
    updates = snapshot["updates"]
    latency = snapshot["latency_ms"]
    errors = " ".join(f"{name}:{count}" for name, count in snapshot["errors"].items()) or "none"
    waiting = devices["starting"] + devices["unreachable"] + devices["refused"]
    return (
        f"[{snapshot['elapsed_seconds']:>7.1f}s] devices auth {devices['authenticated']} "
        f"pending {devices['pending']} other {waiting} | "
        f"polls {polls['total']} ({polls['per_second']}/s, 304 {100 * polls['not_modified_ratio']:.0f}%) | "
        f"reports {snapshot['reports']['total']} | "
        f"updates ok {updates.get('succeeded', 0)} failed {updates.get('failed', 0)} "
        f"rolled back {updates.get('rolled_back', 0)} | errors {errors} | "
        f"p50 {_milliseconds(latency['p50'])} p99 {_milliseconds(latency['p99'])} | "
        f"cpu {snapshot['process']['cpu_percent']}% rss {snapshot['process']['max_rss_mb']:.0f}MB"
    )
