"""Pure rules of events and webhooks: type filters, how far a reader may safely go, backoff,
signatures. No session, no clock, no I/O."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

# "deployment.wave_opened", a prefix "deployment.*", or "*" (everything).
TYPE_PATTERN = r"^(\*|[a-z][a-z0-9_]*(\.[a-z0-9_]+)*(\.\*)?)$"
_TYPE = re.compile(TYPE_PATTERN)

# Events only the webhook they were made for receives (a ping), never fanned out.
PRIVATE_PREFIX = "webhook."


def valid_type_pattern(pattern: str) -> bool:
    """Whether ``pattern`` is a type name, a ``prefix.*`` or ``*``."""
    return bool(_TYPE.match(pattern))


@dataclass(frozen=True)
class TypeFilter:
    """Which event types a pattern list selects: exact names and prefixes; nothing listed = all."""

    exact: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()
    everything: bool = True

    def matches(self, event_type: str) -> bool:
        return (
            self.everything
            or event_type in self.exact
            or any(event_type.startswith(p) for p in self.prefixes)
        )


def type_filter(patterns: Iterable[str]) -> TypeFilter:
    """``["deployment.*", "device.update_state"]`` -> prefixes ``deployment.`` and one exact name."""
    exact: list[str] = []
    prefixes: list[str] = []
    for pattern in patterns:
        if pattern == "*":
            return TypeFilter()
        if pattern.endswith(".*"):
            prefixes.append(pattern[:-1])
        else:
            exact.append(pattern)
    if not exact and not prefixes:
        return TypeFilter()
    return TypeFilter(tuple(exact), tuple(prefixes), everything=False)


def settled_horizon(
    cursor: int,
    seqs: Sequence[int],
    first_seen: dict[int, float],
    now: float,
    gap_timeout: float,
) -> int:
    """The highest seq a reader at ``cursor`` may move to, given the seqs that exist after it.

    Event numbers are taken when a transaction inserts and become visible when it commits, so on
    PostgreSQL seq 11 may be visible while 10 is still in flight. A reader that moved past 10 would
    never see it. So a missing number holds readers back until it appears, or until it has been
    missing for ``gap_timeout`` (its transaction rolled back, or a sequence skipped numbers).
    ``first_seen`` (missing seq -> when it was first noticed; monotonic seconds) is updated in place.
    """
    expected = cursor + 1
    horizon = cursor
    for seq in seqs:
        while expected < seq:  # expected .. seq-1 are missing
            noticed = first_seen.setdefault(expected, now)
            if now - noticed < gap_timeout:
                _forget_below(first_seen, horizon)
                return horizon
            expected += 1
        horizon = seq
        expected = seq + 1
    _forget_below(first_seen, horizon)
    return horizon


def _forget_below(first_seen: dict[int, float], horizon: int) -> None:
    for seq in [s for s in first_seen if s <= horizon]:
        del first_seen[seq]


def backoff_delay(attempts: int, *, base: float, cap: float, random: Callable[[], float]) -> float:
    """Seconds to wait after the ``attempts``-th failure: full jitter over ``base * 2^(n-1)``,
    capped (AWS's "exponential backoff and jitter"). ``random`` returns a float in [0, 1)."""
    ceiling: float = min(cap, base * 2.0 ** max(0, attempts - 1))
    return ceiling * random()


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Fleetlift-Signature`` value: ``sha256=`` and the hex HMAC-SHA256 of
    ``<timestamp>.<body>`` with the subscription's secret."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def delivery_id(event_seq: int, subscription_id: str) -> str:
    """The delivery of one event to one subscription: unique by construction, sorts by event."""
    return f"whd_{event_seq:012d}_{subscription_id.removeprefix('whk_')}"


def truncate_error(text: str, limit: int = 500) -> str:
    """An error message short enough for the delivery log."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
