"""Target conditions compiled to SQL select exactly the devices Python evaluation matches, on a
SQLite file and on PostgreSQL, for tables of tricky cases and for random devices and conditions."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import JSON, Column, Engine, MetaData, String, Table, create_engine, delete, insert, select
from sqlalchemy.dialects.postgresql import JSONB

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
    Value,
    condition_to_sql,
    evaluate,
    parse_condition,
    render,
)

metadata = MetaData()
devices = Table(
    "targeting_devices",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("tags", JSON().with_variant(JSONB(), "postgresql"), nullable=False),
    Column("reported", JSON().with_variant(JSONB(), "postgresql"), nullable=False),
)

Fleet = list[tuple[dict[str, Any], dict[str, Any]]]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    engine = create_engine(url)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    yield engine
    metadata.drop_all(engine)
    engine.dispose()


def _clause(engine: Engine, condition: Condition) -> Any:
    return condition_to_sql(
        condition,
        device_id=devices.c.id,
        tags=devices.c.tags,
        reported=devices.c.reported,
        dialect=engine.dialect.name,
    )


def _sql_matches(engine: Engine, condition: Condition) -> set[str]:
    with engine.connect() as connection:
        return set(connection.scalars(select(devices.c.id).where(_clause(engine, condition))))


def _load(engine: Engine, fleet: Fleet) -> list[DeviceFacts]:
    facts = [DeviceFacts(f"d{i}", tags, reported) for i, (tags, reported) in enumerate(fleet)]
    with engine.begin() as connection:
        connection.execute(delete(devices))
        connection.execute(
            insert(devices), [{"id": f.device_id, "tags": f.tags, "reported": f.reported} for f in facts]
        )
    return facts


# --- tables -------------------------------------------------------------------------------------

FLEET: Fleet = [
    (  # d0
        {"env": "prod", "ring": 1, "it's": "o'k", "name": "abc", "site name": "HQ", "é": "x"},
        {"os": {"name": "linux", "version": 2}, "arch": "arm64"},
    ),
    (  # d1
        {"env": "prod", "ring": "1", "name": "ab", "back\\slash": 1, "0": "zero"},
        {"os": {"name": "linux", "version": 3.5}, "arch": "armv7"},
    ),
    (  # d2
        {"env": "dev", "ring": True, "name": "zürich", "temp": -3, "list": [7, {"a": 1}]},
        {"os": {"name": "windows"}, "arch": "x86_64"},
    ),
    (  # d3
        {"env": "lab", "ring": 1.0, "name": "zzz", "temp": -2.5, "big": 2**62 + 1, "tab\tkey": "t"},
        {"os": None},
    ),
    (  # d4
        {"ring": None, "name": "😀", "env": {"nested": "prod"}, "list": []},
        {},
    ),
]
EVERYONE = {"d0", "d1", "d2", "d3", "d4"}

TABLE: list[tuple[str, set[str]]] = [
    ("*", EVERYONE),
    ("tags.env = 'prod'", {"d0", "d1"}),
    ("tags.env != 'prod'", {"d2", "d3", "d4"}),  # d4's env is an object: defined, not equal
    ("NOT tags.env = 'prod'", {"d2", "d3", "d4"}),
    ("tags.env.nested = 'prod'", {"d4"}),
    ("tags.missing != 'x'", set()),  # undefined is neither equal nor not equal
    ("NOT tags.missing = 'x'", EVERYONE),
    ("NOT tags.missing != 'x'", EVERYONE),
    ("tags.missing NOT IN ['x']", set()),
    ("NOT tags.missing IN ['x']", EVERYONE),
    # 1 vs 1.0 vs '1' vs true vs null
    ("tags.ring = 1", {"d0", "d3"}),
    ("tags.ring = 1.0", {"d0", "d3"}),
    ("tags.ring = '1'", {"d1"}),
    ("tags.ring = true", {"d2"}),
    ("tags.ring != 1", {"d1", "d2", "d4"}),  # null is defined
    ("tags.ring IN [1, true]", {"d0", "d2", "d3"}),
    ("tags.ring NOT IN ['1', 1]", {"d2", "d4"}),
    ("tags.ring > 0.5", {"d0", "d3"}),
    ("tags.ring >= '1'", {"d1"}),
    ("tags.ring < 2 OR tags.ring > 0", {"d0", "d3"}),
    # negative numbers and exact integers
    ("tags.temp < -2.5", {"d2"}),
    ("tags.temp <= -2.5", {"d2", "d3"}),
    ("tags.temp = -3", {"d2"}),
    ("tags.big = 4611686018427387905", {"d3"}),
    ("tags.big > 4611686018427387904", {"d3"}),
    ("tags.big = 4611686018427387904", set()),
    # strings: escapes, unicode, code point order
    ("tags['it''s'] = 'o''k'", {"d0"}),
    ("tags['site name'] = 'HQ'", {"d0"}),
    ("tags['é'] = 'x'", {"d0"}),
    ("tags['back\\slash'] = 1", {"d1"}),
    ("tags['tab\tkey'] = 't'", {"d3"}),
    ("tags['0'] = 'zero'", {"d1"}),
    ("tags.list['0'] = 7", set()),  # keys never index arrays
    ("tags.list['1'].a = 1", set()),
    ("tags.list != 7", {"d2", "d4"}),
    ("tags.name = 'zürich'", {"d2"}),
    ("tags.name < 'zz'", {"d0", "d1"}),  # 'ü' sorts after 'z', whatever the locale says
    ("tags.name > 'zzz'", {"d2", "d4"}),
    ("tags.name >= 'ab' AND tags.name < 'abc'", {"d1"}),
    ("tags.name > '\uffff'", {"d4"}),  # beyond the BMP
    # nested paths
    ("properties.reported.os.version >= 3", {"d1"}),
    ("properties.reported.os.version != 2", {"d1"}),
    ("properties.reported.os.name = 'linux' AND tags.env = 'prod'", {"d0", "d1"}),
    ("properties.reported.os != 'x'", {"d0", "d1", "d2", "d3"}),
    ("properties.reported.os.name != 'linux'", {"d2"}),
    ("properties.reported.arch IN ['arm64', 'armv7']", {"d0", "d1"}),
    ("properties.reported.arch NOT IN ['arm64', 'armv7']", {"d2"}),
    # deviceId
    ("deviceId = 'd2' OR deviceId IN ['d4', 'nope']", {"d2", "d4"}),
    ("deviceId > 'd2'", {"d3", "d4"}),
    ("deviceId != 'd2'", EVERYONE - {"d2"}),
    ("deviceId = 2", set()),
    ("deviceId != 2", EVERYONE),
    ("deviceId NOT IN ['d0', 1]", EVERYONE - {"d0"}),
    ("deviceId IN [1]", set()),
    ("deviceId NOT IN [1]", EVERYONE),
    # connectives
    ("NOT (tags.env = 'prod' OR tags.ring = true)", {"d3", "d4"}),
    ("tags.env = 'dev' OR tags.ring = 1 AND tags.temp < 0", {"d2", "d3"}),
]


@pytest.mark.parametrize(("text", "expected"), TABLE)
def test_table_of_conditions(engine: Engine, text: str, expected: set[str]) -> None:
    facts = _load(engine, FLEET)
    condition = parse_condition(text)
    assert {f.device_id for f in facts if evaluate(condition, f)} == expected
    assert _sql_matches(engine, condition) == expected


def test_literals_and_keys_are_bound_parameters(engine: Engine) -> None:
    hostile = "x'); DROP TABLE targeting_devices; --"
    escaped = hostile.replace("'", "''")
    condition = parse_condition(
        f"tags['{escaped}'] = '{escaped}' OR tags.n > 12345 OR tags.s IN ['{escaped}'] "
        f"OR deviceId = '{escaped}' OR deviceId IN ['{escaped}'] OR deviceId > '{escaped}'"
    )
    sql = str(select(devices.c.id).where(_clause(engine, condition)).compile(dialect=engine.dialect))
    assert "DROP" not in sql and "x'" not in sql and "12345" not in sql
    _load(engine, [*FLEET, ({hostile: hostile}, {})])
    assert _sql_matches(engine, condition) == {"d5"}
    with engine.connect() as connection:
        assert len(list(connection.scalars(select(devices.c.id)))) == 6  # the table survived


def test_long_chains_compile(engine: Engine) -> None:
    condition = parse_condition("tags.ring = 5 OR " * 240 + "tags.env = 'lab'")
    _load(engine, FLEET)
    assert _sql_matches(engine, condition) == {"d3"}


# --- properties ---------------------------------------------------------------------------------

KEYS = ["env", "ring", "é", "a b", "0", "nested"]
SUB_KEYS = ["a", "b", "0"]
_TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=5)
# Integers anywhere in 64 bits compare exactly on every backend; floats stay below 2**53, where
# PostgreSQL's decimals and Python's floats order the same way (see targeting.sql).
SCALARS: st.SearchStrategy[Value] = st.one_of(
    st.sampled_from(["prod", "é", "it's", "1", "", 0, 1, 1.0, -0.0, 2.5, True, False]),
    _TEXT,
    st.integers(min_value=-5, max_value=5),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(min_value=-1e15, max_value=1e15, allow_nan=False),
    st.booleans(),
)
SUB_DOCS = st.dictionaries(st.sampled_from(SUB_KEYS), st.one_of(SCALARS, st.none()), max_size=3)
JSON_VALUES = st.one_of(
    SCALARS,
    SCALARS,
    st.none(),
    SUB_DOCS,
    st.lists(st.one_of(st.integers(0, 3), SUB_DOCS), max_size=2),
)
DOCS = st.dictionaries(st.sampled_from(KEYS), JSON_VALUES, max_size=len(KEYS))
FLEETS = st.lists(st.tuples(DOCS, DOCS), min_size=3, max_size=10)


def _scalars_in(value: Any) -> Iterator[Value]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _scalars_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from _scalars_in(item)
    elif value is not None:
        yield value


def conditions(values: st.SearchStrategy[Value]) -> st.SearchStrategy[Condition]:
    """Random conditions over the key vocabulary; ``*`` is left to the table, it would crowd out the rest."""

    @st.composite
    def comparisons(draw: st.DrawFn) -> Condition:
        root = draw(st.sampled_from([Root.TAGS, Root.TAGS, Root.REPORTED, Root.DEVICE_ID]))
        if root is Root.DEVICE_ID:
            path = Path(root)
            literals = st.one_of(st.sampled_from(["d0", "d1", "d5", "d10", "e"]), values)
        else:
            keys = [draw(st.sampled_from(KEYS))]
            if keys[0] == "nested" or draw(st.integers(0, 7)) == 0:
                keys.append(draw(st.sampled_from(SUB_KEYS)))
            path, literals = Path(root, tuple(keys)), values
        if draw(st.integers(0, 3)) == 0:
            return In(path, tuple(draw(st.lists(literals, min_size=1, max_size=4))), draw(st.booleans()))
        value = draw(literals)
        ops = [Op.EQ, Op.NE] if isinstance(value, bool) else list(Op)
        return Compare(path, draw(st.sampled_from(ops)), value)

    return st.recursive(
        comparisons(),
        lambda inner: st.one_of(
            st.builds(Not, inner), st.builds(And, inner, inner), st.builds(Or, inner, inner)
        ),
        max_leaves=5,
    )


@st.composite
def cases(draw: st.DrawFn) -> tuple[Fleet, list[Condition]]:
    """A fleet, and conditions whose literals are mostly values some device holds, so they match."""
    fleet = draw(FLEETS)
    held = list(_scalars_in([list(pair) for pair in fleet]))
    values = st.one_of(st.sampled_from(held), st.sampled_from(held), SCALARS) if held else SCALARS
    # Several conditions per fleet: loading the rows costs more than one more SELECT.
    return fleet, draw(st.lists(conditions(values), min_size=4, max_size=4))


@given(case=cases())
@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_sql_and_python_agree(engine: Engine, case: tuple[Fleet, list[Condition]]) -> None:
    # The engine fixture only provides the table; every example reloads all of its rows.
    fleet, conditions = case
    facts = _load(engine, fleet)
    for condition in conditions:
        expected = {f.device_id for f in facts if evaluate(condition, f)}
        assert _sql_matches(engine, condition) == expected, render(condition)
