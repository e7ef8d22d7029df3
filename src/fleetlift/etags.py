"""Entity tags from row versions, and the ``If-Match`` check."""

from __future__ import annotations

from fleetlift.errors import PreconditionFailed


def etag_of(row_version: int) -> str:
    """The strong ETag of a resource at a row version."""
    return f'"{row_version}"'


def check_if_match(if_match: str | None, row_version: int) -> None:
    """Refuse a write whose ``If-Match`` names none of the current ETag (``*`` matches any)."""
    if if_match is None:
        return
    current = etag_of(row_version)
    candidates = [part.strip() for part in if_match.split(",")]
    if "*" in candidates or current in candidates:
        return
    raise PreconditionFailed(
        f"If-Match {if_match.strip()[:100]} does not match the current ETag {current}; "
        "read the resource again and retry"
    )
