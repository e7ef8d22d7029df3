"""Pure rules of events and webhooks, in tables."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from fleetlift.events.rules import (
    backoff_delay,
    delivery_id,
    settled_horizon,
    signature,
    truncate_error,
    type_filter,
    valid_type_pattern,
)


@pytest.mark.parametrize(
    ("pattern", "valid"),
    [
        ("*", True),
        ("deployment.*", True),
        ("deployment.wave_opened", True),
        ("device.update_state", True),
        ("deployment", True),
        ("Deployment.started", False),
        ("deployment.*.x", False),
        ("deployment.", False),
        ("", False),
        ("a b", False),
    ],
)
def test_type_patterns(pattern: str, valid: bool) -> None:
    assert valid_type_pattern(pattern) is valid


@pytest.mark.parametrize(
    ("patterns", "matching", "not_matching"),
    [
        ([], ["deployment.started", "device.update_state"], []),
        (["*"], ["anything.at_all"], []),
        (
            ["deployment.*"],
            ["deployment.started", "deployment.wave_opened"],
            ["device.update_state", "deployments.x"],
        ),
        (["device.update_state"], ["device.update_state"], ["device.update_state_x", "device.other"]),
        (
            ["deployment.halted", "device.*"],
            ["deployment.halted", "device.update_state"],
            ["deployment.started"],
        ),
    ],
)
def test_type_filters(patterns: list[str], matching: list[str], not_matching: list[str]) -> None:
    selected = type_filter(patterns)
    assert all(selected.matches(t) for t in matching)
    assert not any(selected.matches(t) for t in not_matching)


@pytest.mark.parametrize(
    ("cursor", "seqs", "first_seen", "now", "horizon", "still_watched"),
    [
        (0, [], {}, 0.0, 0, set()),  # nothing new
        (0, [1, 2, 3], {}, 0.0, 3, set()),  # contiguous: all of it
        (5, [6, 8, 9], {}, 100.0, 6, {7}),  # 7 missing: stop before it, remember when it went missing
        (5, [6, 8, 9], {7: 95.0}, 100.0, 6, {7}),  # missing for 5 s < 10 s: still waiting
        (5, [6, 8, 9], {7: 80.0}, 100.0, 9, set()),  # missing for 20 s: given up, move on
        (6, [7, 8, 9], {7: 99.0}, 100.0, 9, set()),  # it appeared: forgotten
        (0, [3], {}, 50.0, 0, {1}),  # the first missing number holds the rest
        (0, [3], {1: 0.0, 2: 45.0}, 50.0, 0, {1, 2}),  # 1 given up, 2 not yet
        (0, [3], {1: 0.0, 2: 0.0}, 50.0, 3, set()),
    ],
)
def test_settled_horizon(
    cursor: int,
    seqs: list[int],
    first_seen: dict[int, float],
    now: float,
    horizon: int,
    still_watched: set[int],
) -> None:
    watched = dict(first_seen)
    assert settled_horizon(cursor, seqs, watched, now, gap_timeout=10.0) == horizon
    assert set(watched) == still_watched


@pytest.mark.parametrize(
    ("attempts", "ceiling"),
    [(1, 10.0), (2, 20.0), (3, 40.0), (4, 80.0), (9, 2560.0), (10, 3600.0), (30, 3600.0)],
)
def test_backoff_is_full_jitter_under_a_doubling_capped_ceiling(attempts: int, ceiling: float) -> None:
    assert backoff_delay(attempts, base=10, cap=3600, random=lambda: 0.9999999) == pytest.approx(ceiling)
    assert backoff_delay(attempts, base=10, cap=3600, random=lambda: 0.0) == 0.0
    assert backoff_delay(attempts, base=10, cap=3600, random=lambda: 0.5) == pytest.approx(ceiling / 2)


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = b'{"seq":1}'
    expected = hmac.new(b"s3cret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert signature("s3cret", "1700000000", body) == f"sha256={expected}"
    assert signature("s3cret", "1700000001", body) != signature("s3cret", "1700000000", body)


def test_delivery_ids_sort_by_event_and_name_their_subscription() -> None:
    assert delivery_id(42, "whk_01ABC") == "whd_000000000042_01ABC"
    assert delivery_id(9, "whk_Z") < delivery_id(10, "whk_A")
    assert truncate_error("x" * 600).endswith("…") and len(truncate_error("x" * 600)) == 500
    assert truncate_error("short") == "short"
