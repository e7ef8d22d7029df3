"""The target-condition parser, evaluator and renderer."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetlift.errors import ConditionSyntaxError
from fleetlift.targeting import (
    All,
    And,
    Compare,
    DeviceFacts,
    In,
    Not,
    Op,
    Or,
    Path,
    Root,
    evaluate,
    parse_condition,
    render_condition,
)
from fleetlift.targeting.rules import MAX_DEPTH, MAX_LENGTH

from ..integration.test_targeting_sql import conditions

ENV = Path(Root.TAGS, ("env",))
ARCH = Path(Root.REPORTED, ("arch",))


@pytest.mark.parametrize(
    ("text", "tree"),
    [
        ("*", All()),
        ("  *  ", All()),
        ("tags.env = 'prod'", Compare(ENV, Op.EQ, "prod")),
        ("tags.env='prod'", Compare(ENV, Op.EQ, "prod")),
        ("tags.env <> 'prod'", Compare(ENV, Op.NE, "prod")),
        ("tags.ring >= -3", Compare(Path(Root.TAGS, ("ring",)), Op.GE, -3)),
        ("tags.ratio < 2.5", Compare(Path(Root.TAGS, ("ratio",)), Op.LT, 2.5)),
        ("tags.big = 1e3", Compare(Path(Root.TAGS, ("big",)), Op.EQ, 1000.0)),
        ("tags.on = TRUE", Compare(Path(Root.TAGS, ("on",)), Op.EQ, True)),
        ("tags.name = 'it''s'", Compare(Path(Root.TAGS, ("name",)), Op.EQ, "it's")),
        ("tags['site name'] = ''", Compare(Path(Root.TAGS, ("site name",)), Op.EQ, "")),
        ("tags.a.b-c.d = 1", Compare(Path(Root.TAGS, ("a", "b-c", "d")), Op.EQ, 1)),
        ("deviceId = 'gw-1'", Compare(Path(Root.DEVICE_ID), Op.EQ, "gw-1")),
        ("properties.reported.arch IN ['arm64', 'armv7']", In(ARCH, ("arm64", "armv7"))),
        ("properties.reported.arch not in ['x']", In(ARCH, ("x",), negated=True)),
        (
            "tags.env = 'prod' AND properties.reported.arch IN ['arm64'] OR NOT tags.env = 'dev'",
            Or(
                And(Compare(ENV, Op.EQ, "prod"), In(ARCH, ("arm64",))),
                Not(Compare(ENV, Op.EQ, "dev")),
            ),
        ),
        (
            "tags.env = 'a' and (tags.env = 'b' or tags.env = 'c')",
            And(Compare(ENV, Op.EQ, "a"), Or(Compare(ENV, Op.EQ, "b"), Compare(ENV, Op.EQ, "c"))),
        ),
    ],
)
def test_parses(text: str, tree: object) -> None:
    assert parse_condition(text) == tree
    assert parse_condition(render_condition(parse_condition(text))) == tree


@pytest.mark.parametrize(
    ("text", "position", "message"),
    [
        ("", 0, "empty"),
        ("tags.env = ", 11, "expected a value"),
        ("tags.env = 'prod", 11, "unterminated string"),
        ("tags.env == 'prod'", 10, "expected a value"),
        ("tags.env 'prod'", 9, "expected a comparison operator"),
        ("tags.env = 'prod' AND", 21, "unexpected end"),
        ("tags.env = 'prod' tags.x = 1", 18, "expected AND, OR"),
        ("(tags.env = 'prod'", 18, "expected ')'"),
        ("foo = 1", 0, "unknown property 'foo'"),
        ("tags = 1", 0, "needs a key"),
        ("properties.desired.x = 1", 11, "only properties.reported"),
        ("tags.x < true", 9, "boolean"),
        ("tags.x IN []", 11, "at least one value"),
        ("tags.x IN ['a' 'b']", 15, "',' or ']'"),
        ("'prod' = tags.env", 0, "starts with a property path"),
        ("tags.env = 'a' # 1", 15, "unexpected character '#'"),
        ("tags['a\"b'] = 1", 5, "double quote"),
        ("* AND tags.x = 1", 0, "property path"),
    ],
)
def test_syntax_errors_name_the_position(text: str, position: int, message: str) -> None:
    with pytest.raises(ConditionSyntaxError) as caught:
        parse_condition(text)
    assert caught.value.position == position
    assert message in caught.value.detail
    assert f"at position {position}" in caught.value.detail


def test_hostile_input_is_bounded() -> None:
    with pytest.raises(ConditionSyntaxError, match="longer than"):
        parse_condition("tags.x = 1 OR " * 400 + "tags.x = 1")
    with pytest.raises(ConditionSyntaxError, match="deeper than"):
        parse_condition("(" * (MAX_DEPTH + 1) + "tags.x = 1" + ")" * (MAX_DEPTH + 1))
    with pytest.raises(ConditionSyntaxError, match="deeper than"):
        parse_condition("NOT " * (MAX_DEPTH + 1) + "tags.x = 1")
    assert len("x" * MAX_LENGTH) == MAX_LENGTH


DEVICE = DeviceFacts(
    "gw-1",
    tags={
        "env": "prod",
        "ring": 2,
        "on": True,
        "ratio": 1.5,
        "nested": {"a": "x"},
        "nothing": None,
        "list": [1],
    },
    reported={"arch": "arm64"},
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("*", True),
        ("tags.env = 'prod'", True),
        ("tags.env = 'PROD'", False),
        ("tags.ring = 2", True),
        ("tags.ring = 2.0", True),
        ("tags.ring = '2'", False),
        ("tags.on = true", True),
        ("tags.on = 1", False),  # a boolean is not a number
        ("tags.ring > 1.5 AND tags.ring <= 2", True),
        ("tags.ratio < 2", True),
        ("tags.env > 'pro'", True),
        ("tags.env < 2", False),  # a string is never ordered against a number
        ("tags.nested.a = 'x'", True),
        ("tags.nested.b = 'x'", False),
        ("tags.env.deeper = 'x'", False),
        ("tags.missing != 'x'", False),  # undefined is not "not equal"
        ("NOT tags.missing = 'x'", True),
        ("tags.nothing != 'x'", True),  # null is defined
        ("tags.list != 1", True),
        ("tags.missing NOT IN ['x']", False),
        ("tags.env NOT IN ['dev']", True),
        ("properties.reported.arch IN ['arm64', 'armv7']", True),
        ("properties.reported.arch IN [1, true]", False),
        ("deviceId = 'gw-1'", True),
        ("deviceId != 'gw-2'", True),
        ("deviceId = 1", False),
        ("deviceId < 'h'", True),
    ],
)
def test_evaluation(text: str, expected: bool) -> None:
    assert evaluate(parse_condition(text), DEVICE) is expected


@given(conditions)
@settings(max_examples=300, derandomize=True)
def test_render_round_trips(condition: object) -> None:
    text = render_condition(condition)  # type: ignore[arg-type]
    assert parse_condition(text) == condition


@given(st.text(max_size=80))
@settings(max_examples=500, derandomize=True)
def test_any_text_parses_or_fails_cleanly(text: str) -> None:
    try:
        parse_condition(text)
    except ConditionSyntaxError as error:
        assert 0 <= error.position <= len(text)
