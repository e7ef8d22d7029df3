"""Run a fleet: identities (or tokens of pre-admitted devices), a few shared HTTP clients, a task
per device started along the ramp, periodic summaries, and a clean stop on --duration, SIGINT or
SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import ssl
import sys
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from .device import FleetContext, VirtualDevice
from .identities import fleet_identities, save_state
from .protocol import DeviceProtocol
from .settings import SimSettings
from .stats import FleetStats, summary_line

USER_AGENT = "fleetlift-sim"
# httpcore scans every connection of a pool on each request, so its cost grows with the pool:
# many small pools (devices spread over them) keep a request's CPU flat however many connections.
CONNECTIONS_PER_CLIENT = 8


def _skip_absent_sniffio() -> None:
    """httpcore tries ``import sniffio`` on every request; when it is not installed each failed import
    searches sys.path again (a third of the CPU at 10,000 devices). A None entry in sys.modules makes
    that import fail at once, exactly as it would anyway."""
    try:
        import sniffio  # noqa: F401
    except ImportError:
        sys.modules["sniffio"] = None  # type: ignore[assignment]


def read_tokens(path: Path) -> list[tuple[str, str]]:
    """``DEVICE_ID TOKEN`` per line (blank lines and ``#`` comments skipped)."""
    tokens = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{number}: expected 'DEVICE_ID TOKEN'")
        tokens.append((parts[0], parts[1]))
    if not tokens:
        raise ValueError(f"{path}: no tokens")
    return tokens


def failing_indexes(devices: int, share: float | None, seed: int | None) -> frozenset[int]:
    """Exactly ``round(share x devices)`` device indexes, the same for the same seed."""
    if share is None:
        return frozenset()
    return frozenset(random.Random(seed).sample(range(devices), round(share * devices)))


def _pool_sizes(connections: int) -> list[int]:
    clients = -(-connections // CONNECTIONS_PER_CLIENT)
    return [connections // clients + (1 if index < connections % clients else 0) for index in range(clients)]


async def _report_periodically(stats: FleetStats, interval: float, progress: Callable[[str], None]) -> None:
    previous = stats.snapshot()
    stats.start_window()
    while True:
        await asyncio.sleep(interval)
        current = stats.snapshot(previous=previous)
        stats.start_window()
        progress(summary_line(current))
        previous = current


def _watch(task: asyncio.Task[None], stats: FleetStats) -> None:
    """A device that dies of a bug is counted and shown once, never silently lost."""
    if task.cancelled() or task.exception() is None:
        return
    error = task.exception()
    assert error is not None
    first = not any(name.startswith("crash:") for name in stats.errors)
    stats.errors[f"crash:{type(error).__name__}"] += 1
    if first:
        traceback.print_exception(error, file=sys.stderr)


async def run_fleet(
    settings: SimSettings, *, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run until ``settings.duration_seconds`` pass or a stop signal arrives; the summary of the run."""
    tokens = read_tokens(settings.tokens_file) if settings.tokens_file is not None else None
    count = settings.devices if tokens is None else min(settings.devices, len(tokens))
    prefix, identities = fleet_identities(count, settings.prefix, settings.state_file)
    if settings.state_file is not None:
        save_state(settings.state_file, prefix, identities)  # the keys survive even a crash
    stats = FleetStats()
    timeout = httpx.Timeout(
        settings.request_timeout_seconds, connect=min(10.0, settings.request_timeout_seconds)
    )
    _skip_absent_sniffio()
    tls = ssl.create_default_context()  # loading the CA bundle is slow: once, shared by every client
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    handled_signals = []
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal_number, stop.set)
            handled_signals.append(signal_number)
    async with contextlib.AsyncExitStack() as clients:
        protocols = []
        # A long poll holds a connection per device: the pools make room for every device's.
        extra = count if settings.long_poll_seconds else 0
        shared = asyncio.Semaphore(settings.connections) if extra else None
        for size in _pool_sizes(settings.connections + extra):
            client = await clients.enter_async_context(
                httpx.AsyncClient(
                    base_url=settings.server,
                    limits=httpx.Limits(
                        max_connections=size, max_keepalive_connections=size, keepalive_expiry=30.0
                    ),
                    timeout=timeout,
                    verify=tls,
                    headers={"User-Agent": USER_AGENT},
                )
            )
            protocols.append(DeviceProtocol(client, connections=size, stats=stats, slots=shared))
        fleet = FleetContext(settings=settings, stats=stats, rng=random.Random(settings.seed))
        failing = failing_indexes(count, settings.failing_devices, settings.seed)
        devices = [
            VirtualDevice(
                identity,
                fleet,
                protocols[index % len(protocols)],
                token=None if tokens is None else tokens[index],
                fails=index in failing,
            )
            for index, identity in enumerate(identities[:count])
        ]
        step = settings.ramp_seconds / len(devices)
        tasks = [
            asyncio.create_task(device.run(start_delay=index * step)) for index, device in enumerate(devices)
        ]
        for task in tasks:
            task.add_done_callback(lambda done: _watch(done, stats))
        reporter = None
        if progress is not None and settings.stats_interval_seconds > 0:
            reporter = asyncio.create_task(
                _report_periodically(stats, settings.stats_interval_seconds, progress)
            )
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=settings.duration_seconds)
        finally:
            for signal_number in handled_signals:
                loop.remove_signal_handler(signal_number)
            for task in [*tasks, *([reporter] if reporter else [])]:
                task.cancel()
            await asyncio.gather(*tasks, *([reporter] if reporter else []), return_exceptions=True)
    if settings.state_file is not None:
        save_state(settings.state_file, prefix, identities)
    summary = stats.snapshot()
    summary["fleet"] = {
        "server": settings.server,
        "prefix": prefix,
        "devices": len(devices),
        "failing_devices": len(failing),
    }
    # How many devices started an update of a deployment how many times (1 is the only right
    # answer for a device that was offered it once), and offers after a success.
    starts: Counter[int] = Counter()
    for device in devices:
        starts.update(device.installs.values())
    summary["installs_per_device"] = {str(times): n for times, n in sorted(starts.items())}
    summary["reoffered_devices"] = sum(1 for device in devices if device.reoffers)
    if settings.per_device:
        summary["per_device"] = {device.key: device.record() for device in devices}
    return summary
