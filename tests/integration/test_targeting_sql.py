"""Target conditions compiled to SQL select exactly the devices Python evaluation matches, on
SQLite and PostgreSQL, for random devices and random conditions (hypothesis)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Column, Engine, MetaData, String, Table, delete, insert, select

from fleetlift.db import JsonDocument, make_engine
from fleetlift.targeting import (
    And,
    Compare,
    Condition,
    DeviceFacts,
    In,
    Not,
    Op,
    Or,
    Path,
    Root,
    condition_to_sql,
    evaluate,
    parse_condition,
    render_condition,
)

metadata = MetaData()
devices = Table(
    "targeting_devices",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("tags", JsonDocument, nullable=False),
    Column("reported", JsonDocument, nullable=False),
)

KEYS = ["env", "ring", "site", "ok", "it's", "nested"]
SUB_KEYS = ["a", "b"]
TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"], exclude_characters="\x00"), max_size=6
)
STRINGS = st.one_of(st.sampled_from(["prod", "dev", "", "a", "b", "é", "Z", "it's"]), TEXT)
NUMBERS = st.one_of(
    st.integers(min_value=-5, max_value=5),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False).map(
        lambda f: round(f, 3)
    ),
    st.sampled_from([0.5, 1.0, -0.0, 2.5]),
)
SCALARS = st.one_of(STRINGS, NUMBERS, st.booleans())
JSON_VALUES = st.one_of(
    SCALARS,
    st.none(),
    st.lists(st.integers(0, 3), max_size=2),
    st.dictionaries(st.sampled_from(SUB_KEYS), SCALARS, max_size=2),
)
DEVICE_DOCS = st.dictionaries(st.sampled_from(KEYS), JSON_VALUES, max_size=5)
FLEETS = st.lists(st.tuples(DEVICE_DOCS, DEVICE_DOCS), min_size=1, max_size=12)


@st.composite
def paths(draw: st.DrawFn) -> Path:
    root = draw(st.sampled_from([Root.TAGS, Root.REPORTED, Root.TAGS, Root.DEVICE_ID]))
    if root is Root.DEVICE_ID:
        return Path(root)
    keys = [draw(st.sampled_from(KEYS))]
    if keys[0] == "nested" or (draw(st.booleans()) and draw(st.booleans())):
        keys.append(draw(st.sampled_from(SUB_KEYS)))
    return Path(root, tuple(keys))


@st.composite
def comparisons(draw: st.DrawFn) -> Condition:
    path = draw(paths())
    if path.root is Root.DEVICE_ID:
        value: Any = draw(st.one_of(st.sampled_from(["d0", "d1", "d5", "d10"]), NUMBERS))
    else:
        value = draw(SCALARS)
    if draw(st.integers(0, 4)) == 0:
        values = tuple(draw(st.lists(SCALARS, min_size=1, max_size=3)))
        if path.root is Root.DEVICE_ID:
            values = (*values, "d1")
        return In(path, values, negated=draw(st.booleans()))
    ops = [Op.EQ, Op.NE] if isinstance(value, bool) else list(Op)
    return Compare(path, draw(st.sampled_from(ops)), value)


conditions = st.recursive(
    comparisons(),
    lambda inner: st.one_of(st.builds(Not, inner), st.builds(And, inner, inner), st.builds(Or, inner, inner)),
    max_leaves=6,
)


def _engine(url: str) -> Iterator[Engine]:
    engine = make_engine(url)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    yield engine
    metadata.drop_all(engine)
    engine.dispose()


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('targeting') / 'targeting.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    yield from _engine(url)


def _sql_matches(engine: Engine, condition: Condition) -> set[str]:
    clause = condition_to_sql(
        condition,
        device_id=devices.c.id,
        tags=devices.c.tags,
        reported=devices.c.reported,
        dialect=engine.dialect.name,
    )
    with engine.connect() as connection:
        return set(connection.scalars(select(devices.c.id).where(clause)))


def _load(engine: Engine, fleet: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[DeviceFacts]:
    facts = [DeviceFacts(f"d{i}", tags, reported) for i, (tags, reported) in enumerate(fleet)]
    with engine.begin() as connection:
        connection.execute(delete(devices))
        connection.execute(
            insert(devices), [{"id": f.device_id, "tags": f.tags, "reported": f.reported} for f in facts]
        )
    return facts


@given(fleet=FLEETS, condition=conditions)
@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_sql_and_python_agree(
    engine: Engine, fleet: list[tuple[dict[str, Any], dict[str, Any]]], condition: Condition
) -> None:
    facts = _load(engine, fleet)
    expected = {f.device_id for f in facts if evaluate(condition, f)}
    assert _sql_matches(engine, condition) == expected, render_condition(condition)


TABLE: list[tuple[str, set[str]]] = [
    ("*", {"d0", "d1", "d2", "d3", "d4"}),
    ("tags.env = 'prod'", {"d0", "d1"}),
    ("tags.env != 'prod'", {"d2", "d3"}),  # d4 has no env: not "not equal"
    ("NOT tags.env = 'prod'", {"d2", "d3", "d4"}),
    ("tags.ring = 1", {"d0", "d3"}),  # 1 and 1.0; never '1' or true
    ("tags.ring = '1'", {"d1"}),
    ("tags.ring = true", {"d2"}),
    ("tags.ring > 0.5", {"d0", "d3"}),
    ("tags.ring >= '1'", {"d1"}),
    ("tags['it''s'] = 'o''k'", {"d0"}),
    ("tags.env IN ['prod', 'lab']", {"d0", "d1", "d3"}),
    ("tags.env NOT IN ['prod']", {"d2", "d3"}),
    ("properties.reported.os.version >= 3", {"d1"}),
    ("properties.reported.os.name = 'linux' AND tags.env = 'prod'", {"d0", "d1"}),
    ("deviceId = 'd2' OR deviceId IN ['d4']", {"d2", "d4"}),
    ("deviceId > 'd2'", {"d3", "d4"}),
    ("tags.name = 'zürich'", {"d2"}),
    ("tags.name < 'zz'", {"d0"}),  # code-point order: 'ü' sorts after 'z', whatever the locale says
]

FLEET = [
    ({"env": "prod", "ring": 1, "it's": "o'k", "name": "abc"}, {"os": {"name": "linux", "version": 2}}),
    ({"env": "prod", "ring": "1"}, {"os": {"name": "linux", "version": 3.5}}),
    ({"env": "dev", "ring": True, "name": "zürich"}, {"os": {"name": "windows"}}),
    ({"env": "lab", "ring": 1.0, "name": "zzz"}, {"os": None}),
    ({"ring": None}, {}),
]


@pytest.mark.parametrize(("text", "expected"), TABLE)
def test_table_of_conditions(engine: Engine, text: str, expected: set[str]) -> None:
    facts = _load(engine, FLEET)
    condition = parse_condition(text)
    assert {f.device_id for f in facts if evaluate(condition, f)} == expected
    assert _sql_matches(engine, condition) == expected


def test_literals_and_paths_are_bound_parameters(engine: Engine) -> None:
    hostile = "x'); DROP TABLE targeting_devices; --"
    condition = parse_condition(
        f"tags['{hostile.replace(chr(39), chr(39) * 2)}'] = '{hostile.replace(chr(39), chr(39) * 2)}'"
    )
    clause = condition_to_sql(
        condition,
        device_id=devices.c.id,
        tags=devices.c.tags,
        reported=devices.c.reported,
        dialect=engine.dialect.name,
    )
    sql = str(select(devices.c.id).where(clause).compile(dialect=engine.dialect))
    assert "DROP" not in sql and "x'" not in sql
    _load(engine, FLEET)
    assert _sql_matches(engine, condition) == set()
    with engine.connect() as connection:
        assert connection.scalar(select(devices.c.id).limit(1)) is not None  # the table survived
