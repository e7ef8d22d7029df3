"""Opaque cursors for keyset pagination: the client hands back what the last page gave it."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from fleetlift.errors import FieldError, InvalidInput

T = TypeVar("T")


@dataclass(frozen=True)
class PageRequest:
    """Where a page starts (after ``after``, a sort key) and how long it may be."""

    limit: int
    after: list[str] | None = None


@dataclass(frozen=True)
class Page(Generic[T]):
    items: Sequence[T]
    next_cursor: str | None


def encode_cursor(key: Sequence[str]) -> str:
    """Wrap a sort key so clients treat it as opaque."""
    raw = json.dumps(list(key), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> list[str] | None:
    """Unwrap a cursor; anything that is not one of ours is a 400."""
    if cursor is None or cursor == "":
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        key = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeError):
        key = None
    if not isinstance(key, list) or not key or not all(isinstance(part, str) for part in key):
        raise InvalidInput(
            "the cursor is not valid; pass the next_cursor of a previous page unchanged",
            errors=[FieldError("query.cursor", "not a cursor issued by this server")],
        )
    return key


def page_of(rows: Sequence[T], request: PageRequest, key_of: Callable[[T], Sequence[str]]) -> Page[T]:
    """Cut the one extra row fetched to learn whether another page follows."""
    has_more = len(rows) > request.limit
    items = rows[: request.limit]
    next_cursor = encode_cursor(key_of(items[-1])) if has_more and items else None
    return Page(items=items, next_cursor=next_cursor)
