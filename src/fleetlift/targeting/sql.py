"""Target conditions as SQL over the device table, for SQLite and PostgreSQL.

Every literal and every JSON path is a bound parameter; every predicate is two-valued (a CASE
with an ELSE), so ``NOT`` agrees with ``rules.evaluate`` exactly."""

from __future__ import annotations

import operator
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Numeric,
    SQLColumnExpression,
    String,
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
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from fleetlift.targeting.rules import All, And, Compare, Condition, In, Literal, Not, Op, Path, Root

_ORDERING: dict[Op, Callable[[Any, Any], ColumnElement[bool]]] = {
    Op.LT: operator.lt,
    Op.GT: operator.gt,
    Op.LE: operator.le,
    Op.GE: operator.ge,
}


def _kind(value: Literal) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    return "number"


class _Compiler:
    def __init__(
        self,
        *,
        device_id: SQLColumnExpression[Any],
        tags: SQLColumnExpression[Any],
        reported: SQLColumnExpression[Any],
        dialect: str,
    ) -> None:
        if dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"target conditions cannot be compiled for {dialect!r}")
        self.device_id = device_id
        self.columns = {Root.TAGS: tags, Root.REPORTED: reported}
        self.postgres = dialect == "postgresql"

    # Helpers that read one JSON value ----------------------------------------------------------

    def _pg_value(self, path: Path) -> ColumnElement[Any]:
        keys = bindparam(None, list(path.keys), type_=ARRAY(String))
        return self.columns[path.root].op("#>", return_type=JSONB)(keys)

    def _pg_text(self, path: Path) -> ColumnElement[str]:
        keys = bindparam(None, list(path.keys), type_=ARRAY(String))
        return self.columns[path.root].op("#>>", return_type=String)(keys)

    def _sqlite_path(self, path: Path) -> ColumnElement[str]:
        return bindparam(None, "$" + "".join(f'."{key}"' for key in path.keys), type_=String)

    def _type_is(self, path: Path, kind: str) -> ColumnElement[bool]:
        """The JSON value at ``path`` exists and has the literal kind ``kind``."""
        if self.postgres:
            return func.jsonb_typeof(self._pg_value(path)) == kind
        names = {"string": ["text"], "number": ["integer", "real"], "boolean": ["true", "false"]}[kind]
        return func.json_type(self.columns[path.root], self._sqlite_path(path)).in_(names)

    def _defined(self, path: Path) -> ColumnElement[bool]:
        if self.postgres:
            return self._pg_value(path).is_not(None)
        return func.json_type(self.columns[path.root], self._sqlite_path(path)).is_not(None)

    def _typed(self, path: Path, kind: str) -> ColumnElement[Any]:
        """The value at ``path`` as SQL of ``kind``; only read where ``_type_is`` holds."""
        if self.postgres:
            text = self._pg_text(path)
            if kind == "number":
                return cast(text, Numeric)
            return text.collate("C") if kind == "string" else text
        if kind == "boolean":
            return func.json_type(self.columns[path.root], self._sqlite_path(path))
        return func.json_extract(self.columns[path.root], self._sqlite_path(path))

    def _literal(self, value: Literal) -> ColumnElement[Any]:
        if isinstance(value, bool):
            return literal("true" if value else "false", String)
        if isinstance(value, str):
            return literal(value, String)
        if self.postgres:
            # Exact decimal of the literal, so numeric comparison matches Python's float order.
            return literal(Decimal(repr(value)) if isinstance(value, float) else value, Numeric)
        return literal(value)

    @staticmethod
    def _guarded(guard: ColumnElement[bool], predicate: ColumnElement[bool]) -> ColumnElement[bool]:
        # CASE evaluates the guard first, so a cast never sees a value of the wrong type, and
        # the ELSE makes the result false rather than NULL.
        return case((guard, predicate), else_=false())

    # Conditions ---------------------------------------------------------------------------------

    def _equal(self, path: Path, value: Literal) -> ColumnElement[bool]:
        kind = _kind(value)
        if path.root is Root.DEVICE_ID:
            return self.device_id == value if kind == "string" else false()
        return self._guarded(self._type_is(path, kind), self._typed(path, kind) == self._literal(value))

    def _member(self, path: Path, values: tuple[Literal, ...]) -> ColumnElement[bool]:
        if path.root is Root.DEVICE_ID:
            strings = [v for v in values if isinstance(v, str)]
            return self.device_id.in_(strings) if strings else false()
        by_kind: dict[str, list[Literal]] = {}
        for value in values:
            by_kind.setdefault(_kind(value), []).append(value)
        return or_(
            *(
                self._guarded(
                    self._type_is(path, kind),
                    self._typed(path, kind).in_([self._literal(v) for v in members]),
                )
                for kind, members in by_kind.items()
            )
        )

    def compile(self, condition: Condition) -> ColumnElement[bool]:
        if isinstance(condition, All):
            return true()
        if isinstance(condition, Compare):
            path, value = condition.path, condition.value
            if condition.op is Op.EQ:
                return self._equal(path, value)
            if condition.op is Op.NE:
                if path.root is Root.DEVICE_ID:
                    return self.device_id != value if isinstance(value, str) else true()
                return self._guarded(self._defined(path), not_(self._equal(path, value)))
            compare = _ORDERING[condition.op]
            if path.root is Root.DEVICE_ID:
                if not isinstance(value, str):
                    return false()
                column = self.device_id.collate("C") if self.postgres else self.device_id
                return compare(column, literal(value, String))
            kind = _kind(value)
            return self._guarded(
                self._type_is(path, kind), compare(self._typed(path, kind), self._literal(value))
            )
        if isinstance(condition, In):
            member = self._member(condition.path, condition.values)
            if not condition.negated:
                return member
            if condition.path.root is Root.DEVICE_ID:
                return not_(member)
            return self._guarded(self._defined(condition.path), not_(member))
        if isinstance(condition, Not):
            return not_(self.compile(condition.operand))
        if isinstance(condition, And):
            return and_(self.compile(condition.left), self.compile(condition.right))
        return or_(self.compile(condition.left), self.compile(condition.right))


def condition_to_sql(
    condition: Condition,
    *,
    device_id: SQLColumnExpression[Any],
    tags: SQLColumnExpression[Any],
    reported: SQLColumnExpression[Any],
    dialect: str,
) -> ColumnElement[bool]:
    """A boolean SQL expression selecting the devices ``condition`` matches."""
    return _Compiler(device_id=device_id, tags=tags, reported=reported, dialect=dialect).compile(condition)


__all__ = ["condition_to_sql"]
