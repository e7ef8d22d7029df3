"""JSON predicates that differ between SQLite and PostgreSQL, with every value bound.

Lists are passed as ONE bound parameter: fleet-sized ID lists would otherwise need thousands of
bound parameters (SQLite caps them)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    SQLColumnExpression,
    String,
    bindparam,
    func,
    literal,
    or_,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY


def in_list(column: SQLColumnExpression[str], values: Sequence[str], dialect: str) -> ColumnElement[bool]:
    """``column IN values`` with the whole list bound as one parameter."""
    if dialect == "postgresql":
        return column == func.any(bindparam(None, list(values), type_=ARRAY(String)))
    members = select(text("value")).select_from(func.json_each(bindparam(None, json.dumps(list(values)))))
    return column.in_(members.scalar_subquery())


def json_key_equals(
    column: SQLColumnExpression[Any], key: str, value: str, dialect: str
) -> ColumnElement[bool]:
    """``column[key] == value`` for a JSON object column holding string values."""
    if dialect == "postgresql":
        return column.op("->>", return_type=String)(bindparam(None, key, type_=String)) == value
    return (
        func.json_extract(column, bindparam(None, '$."' + key.replace('"', "") + '"', type_=String)) == value
    )


def json_array_empty_or_contains(
    column: SQLColumnExpression[Any], value: str, dialect: str
) -> ColumnElement[bool]:
    """A JSON array column that is empty (meaning "any") or holds ``value``."""
    if dialect == "postgresql":
        return or_(
            func.jsonb_array_length(column) == 0,
            column.op("@>", return_type=Boolean)(
                func.jsonb_build_array(bindparam(None, value, type_=String))
            ),
        )
    members = select(text("value")).select_from(func.json_each(column))
    return or_(func.json_array_length(column) == 0, literal(value, String).in_(members.scalar_subquery()))
