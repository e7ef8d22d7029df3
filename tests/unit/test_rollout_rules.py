"""Rollout rules: wave planning and sizing, the step decision, slots, timeouts, maintenance windows."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest

from fleetlift.deployments.rules import DeviceUpdateState as S
from fleetlift.errors import InvalidInput
from fleetlift.rollouts.rules import (
    ALL_DAYS,
    AwaitApproval,
    Counts,
    Decision,
    Finish,
    Halt,
    OpenWave,
    Progress,
    RolloutState,
    Soak,
    Stay,
    Wave,
    Window,
    counts_from_states,
    error_tripped,
    in_window,
    next_decision,
    parse_window_text,
    plan_waves,
    release_slots,
    timed_out_before,
    wave_sizes,
    windows_of,
)
from fleetlift.rollouts.schemas import Maintenance, RolloutPolicy

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def policy(**fields: Any) -> RolloutPolicy:
    return RolloutPolicy.model_validate(fields)


# Wave planning


def test_no_waves_is_one_wave_of_everything() -> None:
    assert plan_waves(policy(), {}) == (Wave(index=0, name="all devices", kind="all"),)


def test_listed_waves_then_a_remainder_with_the_last_waves_settings() -> None:
    waves = plan_waves(
        policy(
            waves=[
                {"name": "canary", "device_ids": ["gw-2", "gw-1"]},
                {
                    "percent": 10,
                    "success_threshold": 95,
                    "error_threshold": {"percent": 5},
                    "soak_seconds": 600,
                },
                {"count": 500, "error_threshold": {"count": 10}, "requires_approval": True},
            ]
        ),
        {},
    )
    assert [(w.index, w.name, w.kind) for w in waves] == [
        (0, "canary", "device_ids"),
        (1, "10%", "percent"),
        (2, "500 devices", "count"),
        (3, "remainder", "remainder"),
    ]
    assert waves[0].device_ids == ("gw-2", "gw-1")
    assert (waves[1].percent, waves[1].success_threshold, waves[1].error_percent, waves[1].soak_seconds) == (
        10,
        95,
        5,
        600,
    )
    assert (waves[2].count, waves[2].error_count, waves[2].requires_approval) == (500, 10, True)
    remainder = waves[3]
    assert (remainder.error_count, remainder.requires_approval, remainder.device_ids) == (10, True, ())


@pytest.mark.parametrize(
    ("tag_wave", "present", "expected"),
    [
        # listed values keep their order, present or not
        ({"tag": "site", "tag_values": ["paris", "berlin"]}, {"site": ["berlin"]}, ["paris", "berlin"]),
        # without values: every value present, sorted and distinct
        ({"tag": "site"}, {"site": ["rome", "berlin", "rome"]}, ["berlin", "rome"]),
        ({"tag": "site"}, {}, []),
        ({"name": "sites", "tag": "site"}, {"site": ["x"]}, ["x"]),
    ],
)
def test_tag_waves_expand_to_one_wave_per_value(
    tag_wave: dict[str, Any], present: dict[str, list[str]], expected: list[str]
) -> None:
    waves = plan_waves(policy(waves=[{"count": 1}, tag_wave]), present)
    tag_waves = waves[1:-1]
    assert [w.tag_value for w in tag_waves] == expected
    assert all(w.kind == "tag" and w.tag == "site" for w in tag_waves)
    assert [w.index for w in waves] == list(range(len(waves)))
    assert waves[-1].kind == "remainder"
    if expected:
        assert tag_waves[0].name == f"{tag_wave.get('name', 'site')}: {expected[0]}"


def wave(kind: Any, **fields: Any) -> Wave:
    return Wave(index=0, name=str(kind), kind=kind, **fields)


@pytest.mark.parametrize(
    ("total", "waves", "taken", "expected"),
    [
        (100, [wave("percent", percent=10), wave("remainder")], [0, 0], [10, None]),
        (101, [wave("percent", percent=10)], [0], [11]),  # rounds up
        (1000, [wave("percent", percent=5.7)], [0], [57]),  # no float rounding error
        (3, [wave("percent", percent=1)], [0], [1]),  # at least one device
        # percent is of the whole target, counted after identity waves took theirs
        (
            100,
            [wave("device_ids"), wave("percent", percent=50), wave("percent", percent=50)],
            [10, 0, 0],
            [None, 50, 40],
        ),
        (10, [wave("count", count=4), wave("count", count=4), wave("count", count=4)], [0, 0, 0], [4, 4, 2]),
        (10, [wave("tag"), wave("count", count=20), wave("remainder")], [7, 0, 0], [None, 3, None]),
        (0, [wave("percent", percent=100), wave("all")], [0, 0], [0, None]),
    ],
)
def test_wave_sizes(total: int, waves: list[Wave], taken: list[int], expected: list[int | None]) -> None:
    assert wave_sizes(total, waves, taken) == expected


def test_wave_sizes_wants_one_entry_per_wave() -> None:
    with pytest.raises(ValueError, match="one entry per wave"):
        wave_sizes(10, [wave("count", count=1)], [])


# Counts


def test_counts_from_states() -> None:
    counts = counts_from_states(
        {
            S.WAITING: 5,
            S.PENDING: 1,
            S.NOTIFIED: 1,
            S.VERIFYING: 1,
            S.SUCCEEDED: 3,
            S.ALREADY_INSTALLED: 1,
            S.FAILED: 1,
            S.ROLLED_BACK: 1,
            S.TIMED_OUT: 1,
            S.CANCELLED: 2,
        }
    )
    assert counts == Counts(waiting=5, in_flight=3, succeeded=4, failed=3, cancelled=2)
    assert (counts.total, counts.released, counts.done) == (17, 10, False)


def test_counts_accept_plain_state_strings() -> None:
    states: Any = {"waiting": 2, "downloading": 1}
    assert counts_from_states(states) == Counts(waiting=2, in_flight=1)


# The step decision

CANARY = Wave(index=0, name="canary", kind="device_ids", device_ids=("a", "b"))
TEN = Wave(
    index=1, name="10%", kind="percent", percent=10, success_threshold=90, error_percent=20, soak_seconds=600
)
GATED = Wave(index=2, name="500 devices", kind="count", count=500, error_count=3, requires_approval=True)
REST = Wave(index=3, name="remainder", kind="remainder", error_count=3, requires_approval=True)
WAVES = (CANARY, TEN, GATED, REST)


def progress(
    state: RolloutState = RolloutState.WAVE_OPEN,
    current: int = 0,
    *,
    wave: Counts | None = None,
    overall: Counts | None = None,
    later: int = 100,
    soak_until: datetime | None = None,
    approved: int = -1,
) -> Progress:
    wave = wave or Counts()
    return Progress(
        state=state,
        current_wave=current,
        wave_count=len(WAVES),
        soak_until=soak_until,
        approved_through=approved,
        wave=wave,
        overall=overall or wave,
        later_waves_waiting=later,
    )


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (progress(RolloutState.PENDING, later=600), OpenWave(0)),
        (progress(RolloutState.HALTED, wave=Counts(failed=9)), Stay()),
        (progress(RolloutState.FINISHED), Stay()),
        # the open wave is still moving
        (progress(wave=Counts(in_flight=1, succeeded=1)), Stay()),
        (progress(wave=Counts(waiting=1, succeeded=1)), Stay()),
        # canary done, all succeeded, no soak, next wave not gated
        (progress(wave=Counts(succeeded=2)), OpenWave(1)),
        (progress(wave=Counts(succeeded=1, cancelled=1)), OpenWave(1)),  # cancelled devices do not count
        # success threshold missed
        (
            progress(wave=Counts(succeeded=1, failed=1), overall=Counts(succeeded=1, failed=1)),
            Halt("wave 0 (canary): 1 of 2 devices succeeded, below the 100% needed"),
        ),
        # wave 1 done with 9 of 10 (90% needed): soak
        (
            progress(current=1, wave=Counts(succeeded=9, failed=1), overall=Counts(succeeded=11, failed=1)),
            Soak(1, NOW + timedelta(seconds=600)),
        ),
        (
            progress(current=1, wave=Counts(succeeded=8, failed=2), overall=Counts(succeeded=10, failed=2)),
            Halt("wave 1 (10%): 8 of 10 devices succeeded, below the 90% needed"),
        ),
        # error threshold by percent of the released devices so far (20%)
        (
            progress(
                current=1,
                wave=Counts(in_flight=8, failed=2),
                overall=Counts(in_flight=8, succeeded=0, failed=2),
            ),
            Halt(
                "2 of 10 released devices failed (20.0%), reaching the error threshold of 20% of wave 1 (10%)"
            ),
        ),
        (
            progress(
                current=1,
                wave=Counts(in_flight=8, failed=1),
                overall=Counts(in_flight=8, succeeded=2, failed=1),
            ),
            Stay(),
        ),
        # error threshold by count, counting the whole deployment's failures
        (
            progress(
                current=2,
                wave=Counts(in_flight=5, failed=1),
                overall=Counts(in_flight=5, succeeded=50, failed=3),
            ),
            Halt("3 devices failed, reaching the error threshold of 3 of wave 2 (500 devices)"),
        ),
        (
            progress(
                current=2,
                wave=Counts(in_flight=5, failed=1),
                overall=Counts(in_flight=5, succeeded=50, failed=2),
            ),
            Stay(),
        ),
        # soaking
        (progress(RolloutState.SOAKING, 1, soak_until=NOW + timedelta(seconds=1)), Stay()),
        (progress(RolloutState.SOAKING, 1, soak_until=NOW), AwaitApproval(2)),
        (progress(RolloutState.SOAKING, 1, soak_until=NOW - timedelta(seconds=1), approved=2), OpenWave(2)),
        (
            progress(
                RolloutState.SOAKING,
                1,
                soak_until=NOW + timedelta(hours=1),
                overall=Counts(succeeded=1, failed=9),
            ),
            Halt(
                "9 of 10 released devices failed (90.0%), reaching the error threshold of 20% of wave 1 (10%)"
            ),
        ),
        # approval gate
        (progress(RolloutState.AWAITING_APPROVAL, 1, approved=1), Stay()),
        (progress(RolloutState.AWAITING_APPROVAL, 1, approved=2), OpenWave(2)),
        (progress(RolloutState.AWAITING_APPROVAL, 1, approved=5), OpenWave(2)),
        (progress(current=2, wave=Counts(succeeded=500), approved=2), AwaitApproval(3)),
        (progress(current=2, wave=Counts(succeeded=500), approved=3), OpenWave(3)),
        # last wave: finish, failed when any device failed
        (
            progress(current=3, wave=Counts(succeeded=10), overall=Counts(succeeded=500), later=0),
            Finish(failed=False),
        ),
        (
            progress(current=3, wave=Counts(succeeded=10), overall=Counts(succeeded=500, failed=2), later=0),
            Finish(failed=True),
        ),
        # the last wave's success threshold guards nothing: it finishes failed
        (
            progress(
                current=3, wave=Counts(succeeded=8, failed=2), overall=Counts(succeeded=8, failed=2), later=0
            ),
            Finish(failed=True),
        ),
        # a retried device of an earlier wave is still on its way
        (
            progress(
                current=3, wave=Counts(succeeded=10), overall=Counts(succeeded=500, in_flight=1), later=0
            ),
            Stay(),
        ),
        # nothing waits in later waves (an empty remainder): finish without opening them
        (progress(current=2, wave=Counts(succeeded=500), later=0), Finish(failed=False)),
        # an empty wave does not soak and is passed at once
        (progress(current=1, wave=Counts(), overall=Counts(succeeded=2)), AwaitApproval(2)),
        (progress(current=0, wave=Counts(), overall=Counts()), OpenWave(1)),
    ],
)
def test_next_decision(case: Progress, expected: Decision) -> None:
    assert next_decision(case, WAVES, NOW) == expected


@pytest.mark.parametrize(
    ("done", "expected"),
    [(Counts(succeeded=4), Finish(failed=False)), (Counts(succeeded=3, failed=1), Finish(failed=True))],
)
def test_the_only_wave_of_a_plain_deployment_finishes(done: Counts, expected: Finish) -> None:
    (only,) = plan_waves(policy(), {})
    running = Progress(
        state=RolloutState.WAVE_OPEN,
        current_wave=0,
        wave_count=1,
        soak_until=None,
        approved_through=-1,
        wave=Counts(in_flight=1, succeeded=3),
        overall=Counts(in_flight=1, succeeded=3),
        later_waves_waiting=0,
    )
    assert next_decision(running, (only,), NOW) == Stay()
    # No threshold halts it: it ends completed or failed as deployments did before rollouts.
    finished = replace(running, wave=done, overall=done)
    assert next_decision(finished, (only,), NOW) == expected


@pytest.mark.parametrize(
    ("threshold", "overall", "trips"),
    [
        ({"error_count": 1}, Counts(failed=1), True),
        ({"error_count": 2}, Counts(failed=1), False),
        ({"error_percent": 5.0}, Counts(succeeded=95, failed=5), True),
        ({"error_percent": 5.0}, Counts(succeeded=96, failed=4), False),
        ({"error_percent": 5.0}, Counts(waiting=1000, succeeded=19, failed=1), True),  # of the released
        ({"error_percent": 100.0}, Counts(), False),
        ({}, Counts(failed=1000), False),
    ],
)
def test_error_tripped(threshold: dict[str, Any], overall: Counts, trips: bool) -> None:
    assert (error_tripped(Wave(index=0, name="w", kind="all", **threshold), overall) is not None) is trips


@pytest.mark.parametrize(
    ("max_concurrent", "in_flight", "slots"),
    [(None, 5, None), (10, 3, 7), (10, 10, 0), (10, 12, 0), (1, 0, 1)],
)
def test_release_slots(max_concurrent: int | None, in_flight: int, slots: int | None) -> None:
    assert release_slots(max_concurrent, in_flight) == slots


@pytest.mark.parametrize(("seconds", "expected"), [(None, None), (3600, NOW - timedelta(hours=1))])
def test_timed_out_before(seconds: int | None, expected: datetime | None) -> None:
    assert timed_out_before(seconds, NOW) == expected


# Maintenance windows

MON_FRI = frozenset(range(5))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mon-fri 22:00-04:00 Europe/Berlin", (Window(MON_FRI, time(22), time(4), "Europe/Berlin"),)),
        ("MON,wed,fri 01:30-02:45", (Window(frozenset({0, 2, 4}), time(1, 30), time(2, 45), "UTC"),)),
        ("daily 00:00-24:00 UTC", (Window(ALL_DAYS, time(0), time(0), "UTC"),)),
        ("* 09:00-17:00 America/New_York", (Window(ALL_DAYS, time(9), time(17), "America/New_York"),)),
        ("fri-mon 20:00-06:00", (Window(frozenset({4, 5, 6, 0}), time(20), time(6), "UTC"),)),
        ("sat-sun,wed 10:00-11:00", (Window(frozenset({5, 6, 2}), time(10), time(11), "UTC"),)),
        (
            "mon-fri 22:00-04:00 Europe/Berlin; sat 00:00-24:00 UTC;",
            (
                Window(MON_FRI, time(22), time(4), "Europe/Berlin"),
                Window(frozenset({5}), time(0), time(0), "UTC"),
            ),
        ),
    ],
)
def test_parse_window_text(text: str, expected: tuple[Window, ...]) -> None:
    assert parse_window_text(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "a maintenance window is empty"),
        (" ; ", "a maintenance window is empty"),
        ("22:00-04:00", "expected days, a time range and optionally a time zone"),
        ("mon-fri 22:00-04:00 Europe/Berlin extra", "expected days, a time range"),
        ("mon-fry 22:00-04:00", 'unknown day "fry"'),
        ("mon- 22:00-04:00", 'unknown day ""'),
        ("mon 22:00", '"22:00" is not a time range'),
        ("mon 25:00-04:00", '"25:00" is not a time of day as HH:MM'),
        ("mon 22:60-04:00", '"22:60" is not a time of day'),
        ("mon 24:00-04:00", '"24:00" is not a time of day'),  # 24:00 only ends a window
        ("mon 9:00-10:00", '"9:00" is not a time of day'),
        ("mon 22:00-04:00 Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
    ],
)
def test_bad_window_text_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(")):
        parse_window_text(text)


def test_windows_of_a_policy() -> None:
    fixed = Maintenance.model_validate(
        {"windows": [{"days": ["sat", "sun"], "start": "22:00", "end": "24:00"}], "timezone": "Europe/Berlin"}
    )
    assert windows_of(fixed) == (Window(frozenset({5, 6}), time(22), time(0), "Europe/Berlin"),)
    assert windows_of(Maintenance.model_validate({"tag": "mw"})) == ()


BERLIN_NIGHTS = parse_window_text("mon-fri 22:00-04:00 Europe/Berlin")
BERLIN_DST_NIGHT = parse_window_text("sun 01:00-03:00 Europe/Berlin")


@pytest.mark.parametrize(
    ("windows", "utc", "inside"),
    [
        # winter (CET = UTC+1): Mon 21:30 UTC is 22:30 local
        (BERLIN_NIGHTS, datetime(2026, 1, 12, 21, 30), True),
        (BERLIN_NIGHTS, datetime(2026, 1, 12, 20, 30), False),  # 21:30 local
        # summer (CEST = UTC+2): the same UTC hour is an hour later locally
        (BERLIN_NIGHTS, datetime(2026, 7, 13, 20, 30), True),  # 22:30 local
        (BERLIN_NIGHTS, datetime(2026, 7, 14, 1, 59), True),  # Tue 03:59 local, Monday's night
        (BERLIN_NIGHTS, datetime(2026, 7, 14, 2, 0), False),  # Tue 04:00 local
        # past midnight belongs to the start day: Saturday morning ends Friday's night ...
        (BERLIN_NIGHTS, datetime(2026, 1, 17, 2, 0), True),  # Sat 03:00 local
        # ... and Monday morning has no Sunday night before it
        (BERLIN_NIGHTS, datetime(2026, 1, 12, 2, 0), False),  # Mon 03:00 local
        (BERLIN_NIGHTS, datetime(2026, 1, 17, 21, 30), False),  # Sat 22:30 local
        # DST begins 2026-03-29 at 01:00 UTC: 02:00 CET becomes 03:00 CEST
        (BERLIN_DST_NIGHT, datetime(2026, 3, 29, 0, 30), True),  # 01:30 CET
        (BERLIN_DST_NIGHT, datetime(2026, 3, 29, 0, 59), True),  # 01:59 CET
        (BERLIN_DST_NIGHT, datetime(2026, 3, 29, 1, 0), False),  # 03:00 CEST: the window is over
        # DST ends 2026-10-25 at 01:00 UTC: 03:00 CEST becomes 02:00 CET, the window runs an hour longer
        (BERLIN_DST_NIGHT, datetime(2026, 10, 24, 23, 30), True),  # 01:30 CEST
        (BERLIN_DST_NIGHT, datetime(2026, 10, 25, 0, 30), True),  # 02:30 CEST
        (BERLIN_DST_NIGHT, datetime(2026, 10, 25, 1, 30), True),  # 02:30 CET
        (BERLIN_DST_NIGHT, datetime(2026, 10, 25, 2, 0), False),  # 03:00 CET
        # a whole day, and start == end as 24 hours from the start
        (parse_window_text("sat 00:00-24:00"), datetime(2026, 1, 17, 23, 59), True),
        (parse_window_text("sat 00:00-24:00"), datetime(2026, 1, 18, 0, 0), False),
        (parse_window_text("sat 12:00-12:00"), datetime(2026, 1, 18, 11, 59), True),
        (parse_window_text("sat 12:00-12:00"), datetime(2026, 1, 18, 12, 0), False),
        # several windows: any of them
        (parse_window_text("mon 01:00-02:00; tue 01:00-02:00"), datetime(2026, 1, 13, 1, 0), True),
        (parse_window_text("mon 01:00-02:00; tue 01:00-02:00"), datetime(2026, 1, 14, 1, 0), False),
        # a window that ends at midnight
        (parse_window_text("sun 22:00-24:00"), datetime(2026, 1, 18, 23, 59), True),
        (parse_window_text("sun 22:00-24:00"), datetime(2026, 1, 19, 0, 0), False),
        # no windows: always
        ((), datetime(2026, 1, 12, 12, 0), True),
    ],
)
def test_in_window(windows: tuple[Window, ...], utc: datetime, inside: bool) -> None:
    assert in_window(windows, utc.replace(tzinfo=UTC)) is inside
