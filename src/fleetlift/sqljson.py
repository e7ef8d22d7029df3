"""Set membership against a list passed as ONE bound JSON parameter, on SQLite and PostgreSQL.

Fleet-sized ID lists would otherwise need thousands of bound parameters (SQLite caps them)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from sqlalchemy import ColumnElement, SQLColumnExpression, String, bindparam, func, select, text
from sqlalchemy.dialects.postgresql import ARRAY


def in_list(column: SQLColumnExpression[str], values: Sequence[str], dialect: str) -> ColumnElement[bool]:
    """``column IN values`` with the whole list bound as one parameter."""
    if dialect == "postgresql":
        return column == func.any(bindparam(None, list(values), type_=ARRAY(String)))
    members = select(text("value")).select_from(func.json_each(bindparam(None, json.dumps(list(values)))))
    return column.in_(members.scalar_subquery())
