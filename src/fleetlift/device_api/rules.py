"""Pure rules of the device protocol's hot path: whether a token still counts, when a poll is
worth recording as "seen", and the poll answer's ETag."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from fleetlift.devices.rules import DeviceStatus


def token_refusal(status: str | None, tokens_valid_after: datetime | None, issued_at: datetime) -> str | None:
    """Why a correctly signed device token no longer counts, or ``None`` when it does.

    ``status`` is the device's admission status (``None``: the device is gone); a token issued
    before ``tokens_valid_after`` was revoked (rejecting or decommissioning sets it). Token times
    have whole seconds, so the revocation instant is compared at that precision."""
    if status != DeviceStatus.ACCEPTED.value:
        return "the device is no longer admitted"
    if tokens_valid_after is not None and issued_at < tokens_valid_after.replace(microsecond=0):
        return "the device token was revoked; authenticate again"
    return None


def seen_is_stale(last_seen_at: datetime | None, now: datetime, resolution: timedelta) -> bool:
    """Whether a poll should record the device as seen: only once per ``resolution``, so polls do
    not write a row each."""
    return last_seen_at is None or now - last_seen_at >= resolution


def poll_etag(deployment_id: str, release_id: str, release_row_version: int) -> str:
    """The ETag of a poll answer: it changes with the deployment and with any change to its release."""
    digest = hashlib.sha256(f"{deployment_id}:{release_id}:{release_row_version}".encode()).hexdigest()
    return f'"{digest[:32]}"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether ``If-None-Match`` names this ETag (a list of tags, or ``*``)."""
    if if_none_match is None:
        return False
    tags = [tag.strip() for tag in if_none_match.split(",")]
    return etag in tags or "*" in tags
