"""Parsing of repeatable ``key:value`` query filters."""

from __future__ import annotations

from collections.abc import Sequence

from fleetlift.errors import FieldError, InvalidInput


def parse_key_values(values: Sequence[str], *, parameter: str) -> dict[str, str]:
    """``['env:prod', 'site:berlin']`` as a dict; a value without a colon is a 400."""
    pairs: dict[str, str] = {}
    for value in values:
        key, separator, rest = value.partition(":")
        if not separator or not key:
            raise InvalidInput(
                f"'{value[:100]}' is not a key:value filter",
                errors=[FieldError(f"query.{parameter}", "expected key:value")],
            )
        pairs[key] = rest
    return pairs
