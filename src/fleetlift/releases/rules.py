"""Pure rules of releases: the validation verdict and whether a release may be deployed."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from fleetlift.images.rules import Platform, device_platform, runs_on


@dataclass(frozen=True)
class Check:
    """One validation check of one subject (an image, a payload) and how it ended."""

    name: str  # image-resolves, platform, ...
    subject: str
    passed: bool
    detail: str


def platform_checks(image: str, offered: Iterable[Platform], architectures: Sequence[str]) -> list[Check]:
    """Whether the image has something that runs on each architecture the release is for."""
    offered = list(offered)
    names = ", ".join(sorted(str(p) for p in offered)) or "none"
    checks = []
    for architecture in architectures:
        device = device_platform(architecture)
        fits = any(runs_on(platform, device) for platform in offered)
        detail = (
            f"runs on {architecture} ({device})"
            if fits
            else f"offers no platform for {architecture} ({device}); it has {names}"
        )
        checks.append(Check("platform", f"{image} on {architecture}", fits, detail))
    return checks


def verdict(checks: Sequence[Check], *, checked_at: datetime) -> dict[str, Any]:
    """The stored verdict: passed only when every check passed."""
    return {
        "status": "passed" if all(check.passed for check in checks) else "failed",
        "checked_at": checked_at.isoformat(),
        "checks": [asdict(check) for check in checks],
        "override": None,
    }


def with_override(validation: Mapping[str, Any], *, by: str, reason: str, at: datetime) -> dict[str, Any]:
    """The verdict with an admin's recorded decision to deploy despite failed checks."""
    return {**validation, "override": {"by": by, "reason": reason, "at": at.isoformat()}}


def deploy_refusal(validation: Mapping[str, Any]) -> str | None:
    """Why a release may not be deployed, or None when it may (passed, or overridden)."""
    if validation.get("status") == "passed" or validation.get("override"):
        return None
    failed = [check for check in validation.get("checks", []) if not check.get("passed")]
    if not failed:
        return "it has not passed validation"
    first = failed[0]
    more = f" (and {len(failed) - 1} more failed check(s))" if len(failed) > 1 else ""
    return f"check '{first['name']}' failed for {first['subject']}: {first['detail']}{more}"
