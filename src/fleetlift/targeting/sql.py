"""Target conditions as SQL over a device table, for SQLite and PostgreSQL.

``condition_to_sql`` selects exactly the devices ``rules.evaluate`` matches (the semantics are in
that module's docstring). Every JSON key and every literal is a bound parameter, never SQL text.
Every predicate is two-valued: a comparison is ``CASE WHEN <the value has the literal's kind>
THEN <relation> ELSE false END``, so a missing path gives false rather than NULL and ``NOT``
means what it means in Python. The kind check also runs first, so a cast never sees a value of
another kind.

Reading the value at a path:
- SQLite: ``json_type(col, :path)`` names the JSON type (NULL when the path is missing) and
  ``json_extract(col, :path)`` gives the value. Each key is quoted, ``$."a"."b c"``, and escaped
  as Python's ``json`` module (hence SQLAlchemy's JSON type) writes it: SQLite before 3.45
  compares a path key with the raw text of the document, 3.45 and later unescape both.
- PostgreSQL: ``col -> :k1 -> :k2`` with text keys. Not ``#>``: it takes a numeric key as an
  array index, while a condition's keys only name object members. ``jsonb_typeof`` gives the
  kind, ``->>`` the text, compared ``COLLATE "C"`` (code point order) or cast to numeric.

Where a database cannot follow Python exactly:
- PostgreSQL keeps JSON numbers as exact decimals while Python writes a float as its shortest
  decimal; they agree except for a float of magnitude 2**53 or more compared with an integer
  within its rounding error.
- SQLite reads a JSON integer beyond 64 bits as a float.

Index use: ``deviceId =``, ``IN`` and ``NOT IN`` become plain comparisons on the ID column.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Numeric,
    SQLColumnExpression,
    String,
    Text,
    and_,
    bindparam,
    case,
    cast,
    false,
    func,
    literal,
    not_,
    or_,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB

from fleetlift.targeting.rules import (
    All,
    And,
    Compare,
    Condition,
    In,
    Not,
    Op,
    Path,
    Root,
    Value,
    operands,
    value_kind,
)

_ORDERING: dict[Op, Callable[[Any, Any], ColumnElement[bool]]] = {
    Op.LT: operator.lt,
    Op.GT: operator.gt,
    Op.LE: operator.le,
    Op.GE: operator.ge,
}
_SQLITE_TYPES = {"string": ["text"], "number": ["integer", "real"], "boolean": ["true", "false"]}


class _Json:
    """How one backend reads the JSON value at a path of the tags or reported column."""

    def __init__(self, columns: dict[Root, SQLColumnExpression[Any]]) -> None:
        self.columns = columns

    def kind_is(self, path: Path, kind: str) -> ColumnElement[bool]:
        """The value exists and has ``kind``; may be NULL when it does not (only used as a guard)."""
        raise NotImplementedError

    def defined(self, path: Path) -> ColumnElement[bool]:
        """The path exists (its value may be null, an object or an array); never NULL."""
        raise NotImplementedError

    def scalar(self, path: Path, kind: str) -> ColumnElement[Any]:
        """The value as SQL of ``kind``; only meaningful where ``kind_is`` holds."""
        raise NotImplementedError

    def bind(self, value: Value) -> ColumnElement[Any]:
        """A literal as a bound parameter comparable with ``scalar``."""
        if isinstance(value, bool):
            return literal("true" if value else "false", String)
        if isinstance(value, str):
            return literal(value, String)
        return literal(value)  # SQLite compares integers and reals exactly

    def id_ordered(self, device_id: SQLColumnExpression[Any]) -> SQLColumnExpression[Any]:
        """The ID column as compared by ``<`` and friends: by code point."""
        return device_id


class _SqliteJson(_Json):
    def _path(self, path: Path) -> ColumnElement[str]:
        # json.dumps escapes the key exactly as it is stored; the parser refuses '"' in keys.
        text = "$" + "".join(f'."{json.dumps(key)[1:-1]}"' for key in path.keys)
        return bindparam(None, text, type_=String)

    def _type(self, path: Path) -> ColumnElement[str]:
        return func.json_type(self.columns[path.root], self._path(path))

    def kind_is(self, path: Path, kind: str) -> ColumnElement[bool]:
        return self._type(path).in_(_SQLITE_TYPES[kind])

    def defined(self, path: Path) -> ColumnElement[bool]:
        return self._type(path).is_not(None)

    def scalar(self, path: Path, kind: str) -> ColumnElement[Any]:
        if kind == "boolean":
            return self._type(path)  # 'true' or 'false'
        # BINARY collation: UTF-8 byte order, which is code point order.
        return func.json_extract(self.columns[path.root], self._path(path))


class _PostgresJson(_Json):
    def _step(self, value: SQLColumnExpression[Any], key: str, op: str) -> ColumnElement[Any]:
        return value.op(op, return_type=JSONB if op == "->" else Text)(
            cast(bindparam(None, key, type_=Text), Text)
        )

    def _value(self, path: Path) -> ColumnElement[Any]:
        value: SQLColumnExpression[Any] = self.columns[path.root]
        for key in path.keys:
            value = self._step(value, key, "->")
        assert isinstance(value, ColumnElement)
        return value

    def _text(self, path: Path) -> ColumnElement[Any]:
        value: SQLColumnExpression[Any] = self.columns[path.root]
        for key in path.keys[:-1]:
            value = self._step(value, key, "->")
        return self._step(value, path.keys[-1], "->>")

    def kind_is(self, path: Path, kind: str) -> ColumnElement[bool]:
        return func.jsonb_typeof(self._value(path)) == kind

    def defined(self, path: Path) -> ColumnElement[bool]:
        # JSON null is the jsonb value 'null', not SQL NULL: it counts as defined.
        return self._value(path).is_not(None)

    def scalar(self, path: Path, kind: str) -> ColumnElement[Any]:
        if kind == "number":
            return cast(self._text(path), Numeric)
        if kind == "string":
            return self._text(path).collate("C")
        return self._text(path)  # 'true' or 'false'

    def bind(self, value: Value) -> ColumnElement[Any]:
        if isinstance(value, int | float) and not isinstance(value, bool):
            # Typed, or an IN list would take the type of its first value (an int4 that 2**31
            # overflows). A float is bound as its shortest decimal, which is how Python's json
            # writes floats into the documents.
            return literal(Decimal(repr(value)) if isinstance(value, float) else value, Numeric)
        return super().bind(value)

    def id_ordered(self, device_id: SQLColumnExpression[Any]) -> SQLColumnExpression[Any]:
        return device_id.collate("C")


class _Compiler:
    def __init__(self, json_reader: _Json, device_id: SQLColumnExpression[Any]) -> None:
        self.json = json_reader
        self.device_id = device_id

    def _holds(self, path: Path, kind: str, relation: ColumnElement[bool]) -> ColumnElement[bool]:
        return case((self.json.kind_is(path, kind), relation), else_=false())

    def _equal(self, path: Path, value: Value) -> ColumnElement[bool]:
        kind = str(value_kind(value))
        return self._holds(path, kind, self.json.scalar(path, kind) == self.json.bind(value))

    def _compare(self, condition: Compare) -> ColumnElement[bool]:
        path, op, value = condition.path, condition.op, condition.value
        if path.root is Root.DEVICE_ID:
            if not isinstance(value, str):
                return true() if op is Op.NE else false()
            if op is Op.EQ:
                return self.device_id == value
            if op is Op.NE:
                return self.device_id != value
            return _ORDERING[op](self.json.id_ordered(self.device_id), literal(value, String))
        if op is Op.EQ:
            return self._equal(path, value)
        if op is Op.NE:
            return and_(self.json.defined(path), not_(self._equal(path, value)))
        kind = str(value_kind(value))
        relation = _ORDERING[op](self.json.scalar(path, kind), self.json.bind(value))
        return self._holds(path, kind, relation)

    def _in(self, condition: In) -> ColumnElement[bool]:
        path = condition.path
        if path.root is Root.DEVICE_ID:
            strings = [value for value in condition.values if isinstance(value, str)]
            listed = self.device_id.in_(strings) if strings else false()
            return not_(listed) if condition.negated else listed
        by_kind: dict[str, list[ColumnElement[Any]]] = {}
        for value in condition.values:
            by_kind.setdefault(str(value_kind(value)), []).append(self.json.bind(value))
        member = or_(
            *(
                self._holds(path, kind, self.json.scalar(path, kind).in_(values))
                for kind, values in by_kind.items()
            )
        )
        return and_(self.json.defined(path), not_(member)) if condition.negated else member

    def compile(self, condition: Condition) -> ColumnElement[bool]:
        if isinstance(condition, All):
            return true()
        if isinstance(condition, Compare):
            return self._compare(condition)
        if isinstance(condition, In):
            return self._in(condition)
        if isinstance(condition, Not):
            return not_(self.compile(condition.operand))
        # Flattened, so a long chain of ANDs or ORs does not become a deep tree of SQL.
        parts = [self.compile(operand) for operand in operands(condition)]
        return and_(*parts) if isinstance(condition, And) else or_(*parts)


def condition_to_sql(
    condition: Condition,
    *,
    device_id: SQLColumnExpression[Any],
    tags: SQLColumnExpression[Any],
    reported: SQLColumnExpression[Any],
    dialect: str,
) -> ColumnElement[bool]:
    """A two-valued SQL expression that selects the devices ``condition`` matches."""
    columns = {Root.TAGS: tags, Root.REPORTED: reported}
    reader: _Json
    if dialect == "sqlite":
        reader = _SqliteJson(columns)
    elif dialect == "postgresql":
        reader = _PostgresJson(columns)
    else:
        raise ValueError(f"target conditions cannot be compiled for the {dialect!r} dialect")
    return _Compiler(reader, device_id).compile(condition)


__all__ = ["condition_to_sql"]
