"""The vulnerability gate (pure): a Trivy JSON report judged against a policy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

# Trivy's scale, least to most severe.
SEVERITIES = ("UNKNOWN", "LOW", "MEDIUM", "HIGH", "CRITICAL")
TRIVY_REPORT = "application/vnd.aquasec.trivy.report+json"


@dataclass(frozen=True)
class VulnerabilityPolicy:
    """What an image may still carry: findings up to ``max_severity``; with ``fixable_only``
    only findings that have a fix count; allow-listed IDs never count; a report older than
    ``max_age`` is not trusted."""

    max_severity: str = "HIGH"
    fixable_only: bool = False
    allowlist: frozenset[str] = field(default_factory=frozenset)
    max_age: timedelta | None = None


@dataclass(frozen=True)
class Finding:
    id: str
    severity: str
    package: str
    fixed_version: str | None


def _parse_time(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def findings_from_trivy(report: Mapping[str, Any]) -> tuple[datetime | None, list[Finding]]:
    """When a Trivy JSON report was made, and every vulnerability it lists."""
    findings: list[Finding] = []
    results = report.get("Results")
    for result in results if isinstance(results, list) else []:
        vulnerabilities = result.get("Vulnerabilities") if isinstance(result, Mapping) else None
        for item in vulnerabilities if isinstance(vulnerabilities, list) else []:
            if not isinstance(item, Mapping) or not isinstance(item.get("VulnerabilityID"), str):
                continue
            severity = str(item.get("Severity", "UNKNOWN")).upper()
            findings.append(
                Finding(
                    id=item["VulnerabilityID"],
                    severity=severity if severity in SEVERITIES else "UNKNOWN",
                    package=str(item.get("PkgName", "")),
                    fixed_version=str(item["FixedVersion"]) if item.get("FixedVersion") else None,
                )
            )
    return _parse_time(report.get("CreatedAt")), findings


def judge(
    policy: VulnerabilityPolicy, created_at: datetime | None, findings: Sequence[Finding], now: datetime
) -> tuple[bool, str]:
    """Whether the findings pass the policy, and a reason a person can act on."""
    if policy.max_age is not None:
        if created_at is None:
            return False, "the scan report says not when it was made"
        age = now - created_at
        if age > policy.max_age:
            return False, f"the scan report is {age.days} day(s) old; at most {policy.max_age} is accepted"
    allowed = SEVERITIES.index(policy.max_severity)
    blocking = [
        finding
        for finding in findings
        if SEVERITIES.index(finding.severity) > allowed
        and finding.id not in policy.allowlist
        and (finding.fixed_version is not None or not policy.fixable_only)
    ]
    if not blocking:
        return True, f"{len(findings)} finding(s), none above {policy.max_severity} that the policy counts"
    worst = max(blocking, key=lambda finding: SEVERITIES.index(finding.severity))
    listed = ", ".join(sorted({f"{f.id} ({f.severity})" for f in blocking})[:5])
    return False, (
        f"{len(blocking)} finding(s) above {policy.max_severity}, worst {worst.severity}: {listed}"
        + (" ..." if len(blocking) > 5 else "")
    )
