"""Pure rules of rollouts: planning waves, the step from one wave to the next, thresholds,
concurrency slots, device timeouts and maintenance windows. No I/O and no clock: the
reconciler reads the state, asks these rules, and applies the answer with set-based SQL."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, time, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Literal
from zoneinfo import ZoneInfo

from fleetlift.deployments.rules import FAILURES, PROGRESS, SUCCESSES, DeviceUpdateState
from fleetlift.errors import InvalidInput
from fleetlift.rollouts.schemas import Maintenance, RolloutPolicy, WaveSpec, check_timezone


class RolloutState(StrEnum):
    PENDING = "pending"
    WAVE_OPEN = "wave_open"
    SOAKING = "soaking"
    AWAITING_APPROVAL = "awaiting_approval"
    HALTED = "halted"
    FINISHED = "finished"


WaveKind = Literal["device_ids", "percent", "count", "tag", "remainder", "all"]


@dataclass(frozen=True)
class Wave:
    """One planned wave: how it picks its devices and what it must reach."""

    index: int
    name: str
    kind: WaveKind
    device_ids: tuple[str, ...] = ()
    percent: float | None = None
    count: int | None = None
    tag: str | None = None
    tag_value: str | None = None
    success_threshold: float = 100.0
    error_percent: float | None = None
    error_count: int | None = None
    soak_seconds: int = 0
    requires_approval: bool = False


def _template(spec: WaveSpec) -> Wave:
    """A wave carrying a listed wave's thresholds, soak and gate; callers fill in the rest."""
    threshold = spec.error_threshold
    return Wave(
        index=0,
        name="",
        kind="all",
        success_threshold=float(spec.success_threshold),
        error_percent=threshold.percent if threshold else None,
        error_count=threshold.count if threshold else None,
        soak_seconds=spec.soak_seconds,
        requires_approval=spec.requires_approval,
    )


def plan_waves(policy: RolloutPolicy, tag_values: Mapping[str, Sequence[str]]) -> tuple[Wave, ...]:
    """The waves of a policy, indexed from 0: tag waves expanded to one wave per value, then a
    remainder wave for devices no listed wave takes. ``tag_values`` holds, for each tag wave
    without ``tag_values``, the distinct values among the targeted devices (any order)."""
    if not policy.waves:
        return (Wave(index=0, name="all devices", kind="all"),)
    waves: list[Wave] = []
    for spec in policy.waves:
        template = _template(spec)
        number = len(waves) + 1
        if spec.device_ids is not None:
            waves.append(
                replace(
                    template,
                    name=spec.name or f"wave {number}",
                    kind="device_ids",
                    device_ids=tuple(spec.device_ids),
                )
            )
        elif spec.percent is not None:
            waves.append(
                replace(
                    template, name=spec.name or f"{spec.percent:g}%", kind="percent", percent=spec.percent
                )
            )
        elif spec.count is not None:
            waves.append(
                replace(template, name=spec.name or f"{spec.count} devices", kind="count", count=spec.count)
            )
        elif spec.tag is not None:
            values = (
                list(spec.tag_values)
                if spec.tag_values is not None
                else sorted(set(tag_values.get(spec.tag, ())))
            )
            # A tag with no values among the targeted devices yields no wave at all.
            waves.extend(
                replace(
                    template,
                    name=f"{spec.name or spec.tag}: {value}",
                    kind="tag",
                    tag=spec.tag,
                    tag_value=value,
                )
                for value in values
            )
    # Always there, so devices no wave takes (and devices joining later) have a home; when it
    # holds no devices the step rule finishes without opening it.
    waves.append(replace(_template(policy.waves[-1]), name="remainder", kind="remainder"))
    return tuple(replace(wave, index=index) for index, wave in enumerate(waves))


def wave_sizes(total: int, waves: Sequence[Wave], taken_before: Sequence[int]) -> list[int | None]:
    """How many devices each percent or count wave takes, in wave order, from the devices left
    after the identity waves took theirs; ``None`` for waves that pick devices by identity.

    ``total`` is the whole target set; ``taken_before[i]`` is how many devices wave ``i`` took
    by identity (device_ids or tag) before sizing, 0 for the other waves. A percent is of
    ``total`` and rounds up; every size is capped by the devices still left.
    """
    if len(taken_before) != len(waves):
        raise ValueError("taken_before needs one entry per wave")
    left = max(0, total - sum(taken_before))
    sizes: list[int | None] = []
    for wave in waves:
        if wave.kind == "percent" and wave.percent is not None:
            # Decimal keeps 5.7% of 1000 at exactly 57 where floats would round it up to 58.
            wanted = math.ceil(total * Decimal(str(wave.percent)) / 100)
        elif wave.kind == "count" and wave.count is not None:
            wanted = wave.count
        else:
            sizes.append(None)
            continue
        size = min(wanted, left)
        sizes.append(size)
        left -= size
    return sizes


@dataclass(frozen=True)
class Counts:
    """Devices per kind of update state."""

    waiting: int = 0
    in_flight: int = 0  # released, not terminal (pending..verifying)
    succeeded: int = 0  # succeeded + already_installed
    failed: int = 0  # failed + rolled_back + timed_out
    cancelled: int = 0

    @property
    def total(self) -> int:
        """Every device counted."""
        return self.waiting + self.in_flight + self.succeeded + self.failed + self.cancelled

    @property
    def released(self) -> int:
        """Devices that were let start: in flight or with an outcome other than cancelled."""
        return self.in_flight + self.succeeded + self.failed

    @property
    def done(self) -> bool:
        """Whether nothing is waiting or in flight."""
        return self.waiting == 0 and self.in_flight == 0


def counts_from_states(states: Mapping[DeviceUpdateState, int]) -> Counts:
    """Fold per-state device counts (enum or plain string keys) into ``Counts``."""
    by_state = {DeviceUpdateState(state): n for state, n in states.items()}

    def total(of: Sequence[DeviceUpdateState] | frozenset[DeviceUpdateState]) -> int:
        return sum(by_state.get(state, 0) for state in of)

    return Counts(
        waiting=by_state.get(DeviceUpdateState.WAITING, 0),
        in_flight=total(PROGRESS),
        succeeded=total(SUCCESSES),
        failed=total(FAILURES),
        cancelled=by_state.get(DeviceUpdateState.CANCELLED, 0),
    )


@dataclass(frozen=True)
class Progress:
    """What the reconciler knows about a deployment now. ``current_wave`` is the wave opened
    last: the one open, soaking, or done while the next awaits approval."""

    state: RolloutState
    current_wave: int
    wave_count: int
    soak_until: datetime | None
    approved_through: int
    wave: Counts  # the current wave's devices
    overall: Counts  # the whole deployment
    later_waves_waiting: int  # devices waiting in waves after the current one


@dataclass(frozen=True)
class OpenWave:
    wave: int


@dataclass(frozen=True)
class Soak:
    wave: int
    until: datetime


@dataclass(frozen=True)
class AwaitApproval:
    wave: int


@dataclass(frozen=True)
class Halt:
    reason: str


@dataclass(frozen=True)
class Finish:
    failed: bool


@dataclass(frozen=True)
class Stay:
    pass


Decision = OpenWave | Soak | AwaitApproval | Halt | Finish | Stay


def error_tripped(wave: Wave, overall: Counts) -> str | None:
    """Why the deployment's failures so far reach this wave's error threshold, or ``None``.
    A threshold is the level that halts: a count of 10 halts at the 10th failure."""
    failed = overall.failed
    if wave.error_count is not None and failed >= wave.error_count:
        return (
            f"{failed} devices failed, reaching the error threshold of {wave.error_count} "
            f"of wave {wave.index} ({wave.name})"
        )
    released = overall.released
    # Compared without float division so 5 of 100 meets a 5% threshold exactly.
    if (
        wave.error_percent is not None
        and failed > 0
        and failed * 100 >= Decimal(str(wave.error_percent)) * released
    ):
        return (
            f"{failed} of {released} released devices failed ({failed * 100 / released:.1f}%), "
            f"reaching the error threshold of {wave.error_percent:g}% of wave {wave.index} ({wave.name})"
        )
    return None


def _wave_at(waves: Sequence[Wave], index: int) -> Wave:
    """The wave with this index; the last one when the plan has fewer (tag values vanished)."""
    return waves[min(max(index, 0), len(waves) - 1)]


def _success_shortfall(wave: Wave, counts: Counts) -> str | None:
    """Why a done wave did not succeed enough, or ``None``; cancelled devices do not count."""
    considered = counts.total - counts.cancelled
    if considered == 0:
        return None
    if counts.succeeded * 100 >= Decimal(str(wave.success_threshold)) * considered:
        return None
    return (
        f"wave {wave.index} ({wave.name}): {counts.succeeded} of {considered} devices succeeded, "
        f"below the {wave.success_threshold:g}% needed"
    )


def _next_wave(progress: Progress, waves: Sequence[Wave]) -> Decision:
    """Open the wave after the current one, or wait at its approval gate."""
    following = progress.current_wave + 1
    if _wave_at(waves, following).requires_approval and progress.approved_through < following:
        return AwaitApproval(following)
    return OpenWave(following)


def _is_last(progress: Progress) -> bool:
    """Whether no later wave has a device left to release."""
    return progress.current_wave >= progress.wave_count - 1 or progress.later_waves_waiting == 0


def next_decision(progress: Progress, waves: Sequence[Wave], now: datetime) -> Decision:
    """The one next step of a rollout; the reconciler applies it and asks again until ``Stay``.
    Ask only for an active, started deployment: starting it is the go for wave 0."""
    state = progress.state
    if state in (RolloutState.HALTED, RolloutState.FINISHED):
        return Stay()
    if state is RolloutState.PENDING:
        return OpenWave(0)
    if state is RolloutState.AWAITING_APPROVAL:
        awaited = progress.current_wave + 1
        return OpenWave(awaited) if progress.approved_through >= awaited else Stay()
    wave = _wave_at(waves, progress.current_wave)
    reason = error_tripped(wave, progress.overall)
    if reason is not None:
        return Halt(reason)
    if state is RolloutState.SOAKING:
        if progress.soak_until is not None and now < progress.soak_until:
            return Stay()
        return _next_wave(progress, waves)
    # WAVE_OPEN
    if not progress.wave.done:
        return Stay()
    if _is_last(progress):
        # A success threshold only guards the next wave, so the last one finishes either way
        # (a plain deployment with a failure ends failed, as before rollouts). Retried devices
        # of earlier waves may still be on their way.
        if not progress.overall.done:
            return Stay()
        return Finish(failed=progress.overall.failed > 0)
    shortfall = _success_shortfall(wave, progress.wave)
    if shortfall is not None:
        return Halt(shortfall)
    # An empty wave has nothing to watch, so it does not soak.
    if wave.soak_seconds > 0 and progress.wave.total > 0:
        return Soak(progress.current_wave, now + timedelta(seconds=wave.soak_seconds))
    return _next_wave(progress, waves)


def release_slots(max_concurrent: int | None, in_flight: int) -> int | None:
    """How many more devices may be released now; ``None`` means no limit."""
    if max_concurrent is None:
        return None
    return max(0, max_concurrent - in_flight)


def timed_out_before(device_timeout_seconds: int | None, now: datetime) -> datetime | None:
    """Released devices whose last change is older than this time out; ``None``: never."""
    if device_timeout_seconds is None:
        return None
    return now - timedelta(seconds=device_timeout_seconds)


# Maintenance windows

DAY_NAMES: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
ALL_DAYS: frozenset[int] = frozenset(range(7))
_EXAMPLE = '"mon-fri 22:00-04:00 Europe/Berlin"'
_TIME = re.compile(r"^(\d{2}):(\d{2})$")


@dataclass(frozen=True)
class Window:
    """Start days (0 = Monday) and a local time range; an end at or before the start runs
    past midnight into the next day (equal start and end: 24 hours)."""

    days: frozenset[int]
    start: time
    end: time
    tz: str


def _clock(text: str, *, is_end: bool, entry: str) -> time:
    """Parse HH:MM (24:00 allowed as an end, meaning midnight)."""
    match = _TIME.match(text)
    if match is not None:
        hour, minute = int(match.group(1)), int(match.group(2))
        if is_end and (hour, minute) == (24, 0):
            return time(0, 0)
        if hour < 24 and minute < 60:
            return time(hour, minute)
    raise InvalidInput(f'maintenance window "{entry}": "{text}" is not a time of day as HH:MM')


def _days(text: str, entry: str) -> frozenset[int]:
    """Parse "daily", "*", a day, a range "mon-fri" (may wrap: "fri-mon") or a list of them."""
    if text in ("daily", "*"):
        return ALL_DAYS
    days: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.partition("-")
        for name in (first, last) if dash else (first,):
            if name not in DAY_NAMES:
                raise InvalidInput(
                    f'maintenance window "{entry}": unknown day "{name}"; use mon..sun, ranges like '
                    f'mon-fri, lists like mon,wed,fri, or "daily"'
                )
        start = DAY_NAMES.index(first)
        stop = DAY_NAMES.index(last) if dash else start
        days.update((start + offset) % 7 for offset in range((stop - start) % 7 + 1))
    return frozenset(days)


def parse_window_text(text: str) -> tuple[Window, ...]:
    """Parse window text such as "mon-fri 22:00-04:00 Europe/Berlin; sat 00:00-24:00 UTC"
    (time zone optional, UTC by default); raise ``InvalidInput`` saying what is wrong."""
    windows: list[Window] = []
    for raw in text.split(";"):
        entry = raw.strip()
        if not entry:
            continue
        parts = entry.lower().split()
        if len(parts) not in (2, 3):
            raise InvalidInput(
                f'maintenance window "{entry}": expected days, a time range and optionally a time zone, '
                f"like {_EXAMPLE}"
            )
        days = _days(parts[0], entry)
        start_text, dash, end_text = parts[1].partition("-")
        if not dash:
            raise InvalidInput(
                f'maintenance window "{entry}": "{parts[1]}" is not a time range like 22:00-04:00'
            )
        start = _clock(start_text, is_end=False, entry=entry)
        end = _clock(end_text, is_end=True, entry=entry)
        # Time zone names are case-sensitive, so take it from the original text.
        tz = entry.split()[2] if len(parts) == 3 else "UTC"
        try:
            check_timezone(tz)
        except ValueError as error:
            raise InvalidInput(f'maintenance window "{entry}": {error}') from None
        windows.append(Window(days=days, start=start, end=end, tz=tz))
    if not windows:
        raise InvalidInput(f"a maintenance window is empty; write one like {_EXAMPLE}")
    return tuple(windows)


def windows_of(maintenance: Maintenance) -> tuple[Window, ...]:
    """The fixed windows of a policy. The tag form has none here: empty (read each device's tag
    with ``parse_window_text``); mind that ``in_window`` treats no windows as always open."""
    return tuple(
        Window(
            days=frozenset(DAY_NAMES.index(day) for day in window.days),
            start=_clock(window.start, is_end=False, entry=f"{window.start}-{window.end}"),
            end=_clock(window.end, is_end=True, entry=f"{window.start}-{window.end}"),
            tz=maintenance.timezone,
        )
        for window in maintenance.windows or ()
    )


def _inside(window: Window, now: datetime) -> bool:
    """Whether an aware ``now`` falls in one window, judged by the wall clock of its zone."""
    local = now.astimezone(ZoneInfo(window.tz))
    clock, day = local.time().replace(tzinfo=None), local.weekday()
    if window.start < window.end:
        return day in window.days and window.start <= clock < window.end
    # Runs past midnight: the evening part belongs to a start day, the morning to the day after.
    return (day in window.days and clock >= window.start) or (
        (day - 1) % 7 in window.days and clock < window.end
    )


def in_window(windows: Sequence[Window], now: datetime) -> bool:
    """Whether an aware ``now`` falls in any of the windows; no windows means always."""
    return not windows or any(_inside(window, now) for window in windows)
