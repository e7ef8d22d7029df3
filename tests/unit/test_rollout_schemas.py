"""The rollout policy schema: what it accepts, what it refuses and how it says why."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from fleetlift.rollouts.schemas import Maintenance, RolloutPolicy, WaveSpec


def test_the_empty_policy_is_all_defaults() -> None:
    policy = RolloutPolicy.model_validate({})
    assert policy.waves == []
    assert policy.max_concurrent is None and policy.maintenance is None
    assert policy.mode == "soft" and policy.rollback.on_error == "pause"
    assert policy.device_timeout_seconds is None and policy.dynamic is False


def test_the_documented_example_round_trips() -> None:
    example = RolloutPolicy.model_json_schema()["examples"][0]
    policy = RolloutPolicy.model_validate(example)
    stored = policy.model_dump(mode="json", exclude_defaults=False)
    assert RolloutPolicy.model_validate(stored) == policy
    assert stored["waves"][1]["error_threshold"] == {"percent": 5.0, "count": None}


def test_wave_defaults() -> None:
    wave = WaveSpec.model_validate({"percent": 10})
    assert (wave.success_threshold, wave.error_threshold, wave.soak_seconds, wave.requires_approval) == (
        100,
        None,
        0,
        False,
    )


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (
            {"waves": [{"percent": 10, "count": 5}]},
            "exactly one of device_ids, percent, count, tag (got percent, count)",
        ),
        ({"waves": [{"name": "x"}]}, "exactly one of device_ids, percent, count, tag (got none)"),
        ({"waves": [{"device_ids": ["a"], "tag": "site"}]}, "got device_ids, tag"),
        ({"waves": [{"percent": 10, "tag_values": ["berlin"]}]}, "tag_values needs tag"),
        ({"waves": [{"tag": "site", "tag_values": ["a", "a"]}]}, "lists a value twice"),
        ({"waves": [{"device_ids": ["a", "a"]}]}, "lists a device twice"),
        (
            {"waves": [{"device_ids": ["a"]}, {"device_ids": ["b", "a"]}]},
            "'a' is listed in wave 0 and wave 1",
        ),
        ({"waves": [{"device_ids": []}]}, "at least 1 item"),
        ({"waves": [{"percent": 0}]}, "greater than 0"),
        ({"waves": [{"percent": 101}]}, "less than or equal to 100"),
        ({"waves": [{"count": 0}]}, "greater than or equal to 1"),
        ({"waves": [{"tag": "bad key!"}]}, "should match pattern"),
        ({"waves": [{"count": 1, "success_threshold": 101}]}, "less than or equal to 100"),
        ({"waves": [{"count": 1, "soak_seconds": 31 * 86400}]}, "less than or equal to 2592000"),
        ({"waves": [{"count": 1, "error_threshold": {}}]}, "exactly one of percent, count (got none)"),
        (
            {"waves": [{"count": 1, "error_threshold": {"percent": 5, "count": 2}}]},
            "exactly one of percent, count",
        ),
        ({"waves": [{"count": 1, "colour": "red"}]}, "Extra inputs are not permitted"),
        ({"waves": [{"count": 1}] * 101}, "at most 100 items"),
        ({"rollback": {"on_error": "rollback_failed"}}, "'rollback_failed' needs release_id"),
        ({"rollback": {"on_error": "rollback_all"}}, "'rollback_all' needs release_id"),
        ({"rollback": {"on_error": "explode"}}, "'pause', 'rollback_failed' or 'rollback_all'"),
        ({"max_concurrent": 0}, "greater than or equal to 1"),
        ({"device_timeout_seconds": 59}, "greater than or equal to 60"),
        ({"mode": "hard"}, "'soft' or 'forced'"),
        (
            {
                "maintenance": {
                    "windows": [{"days": ["mon"], "start": "22:00", "end": "04:00"}],
                    "timezone": "Mars/Olympus",
                }
            },
            "unknown time zone 'Mars/Olympus'",
        ),
        ({"maintenance": {}}, "exactly one of windows, tag (got none)"),
        (
            {"maintenance": {"tag": "mw", "windows": [{"days": ["mon"], "start": "01:00", "end": "02:00"}]}},
            "got windows, tag",
        ),
        ({"maintenance": {"tag": "mw", "timezone": "Europe/Berlin"}}, "timezone applies to windows only"),
        ({"maintenance": {"windows": [{"days": [], "start": "01:00", "end": "02:00"}]}}, "at least 1 item"),
        ({"maintenance": {"windows": [{"days": ["monday"], "start": "01:00", "end": "02:00"}]}}, "'mon'"),
        (
            {"maintenance": {"windows": [{"days": ["mon"], "start": "24:00", "end": "02:00"}]}},
            "should match pattern",
        ),
        (
            {"maintenance": {"windows": [{"days": ["mon"], "start": "1:00", "end": "02:00"}]}},
            "should match pattern",
        ),
        (
            {"maintenance": {"windows": [{"days": ["mon"], "start": "01:00", "end": "24:01"}]}},
            "should match pattern",
        ),
    ],
)
def test_invalid_policies_say_why(policy: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as raised:
        RolloutPolicy.model_validate(policy)
    assert message in str(raised.value)


@pytest.mark.parametrize(
    "policy",
    [
        {"waves": [{"tag": "site"}]},
        {"waves": [{"tag": "site", "tag_values": ["berlin", "paris"], "requires_approval": True}]},
        {"rollback": {"on_error": "rollback_all", "release_id": "rel_1"}},
        {"rollback": {"on_error": "pause"}},
        {"maintenance": {"tag": "maintenance_window"}},
        {"maintenance": {"windows": [{"days": ["sat", "sun"], "start": "00:00", "end": "24:00"}]}},
        {
            "maintenance": {
                "windows": [{"days": ["mon"], "start": "22:00", "end": "22:00"}],
                "timezone": "Asia/Tokyo",
            }
        },
        {"mode": "forced", "max_concurrent": 1, "device_timeout_seconds": 60, "dynamic": True},
        {
            "waves": [
                {"count": 1, "success_threshold": 0, "error_threshold": {"count": 1}, "soak_seconds": 2592000}
            ]
        },
    ],
)
def test_valid_policies(policy: dict[str, Any]) -> None:
    RolloutPolicy.model_validate(policy)


def test_maintenance_tag_form_keeps_utc_default_when_stored() -> None:
    maintenance = Maintenance.model_validate({"tag": "mw"})
    assert Maintenance.model_validate(maintenance.model_dump(mode="json")) == maintenance
