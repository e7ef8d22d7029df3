"""Pure rules of the device slice: admission status and its transitions."""

from __future__ import annotations

from enum import StrEnum

from fleetlift.errors import IllegalTransition
from fleetlift.targeting import Condition, parse_condition


class DeviceStatus(StrEnum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    DECOMMISSIONED = "decommissioned"


class AdmissionEvent(StrEnum):
    ACCEPT = "accept"
    REJECT = "reject"
    DECOMMISSION = "decommission"


# Mender's admission model: a rejected device may be accepted later (an operator changed their
# mind); decommissioning is final, the device must register again under a new identity.
_ADMISSION: dict[tuple[DeviceStatus, AdmissionEvent], DeviceStatus] = {
    (DeviceStatus.PENDING, AdmissionEvent.ACCEPT): DeviceStatus.ACCEPTED,
    (DeviceStatus.PENDING, AdmissionEvent.REJECT): DeviceStatus.REJECTED,
    (DeviceStatus.REJECTED, AdmissionEvent.ACCEPT): DeviceStatus.ACCEPTED,
    (DeviceStatus.ACCEPTED, AdmissionEvent.REJECT): DeviceStatus.REJECTED,
    (DeviceStatus.PENDING, AdmissionEvent.DECOMMISSION): DeviceStatus.DECOMMISSIONED,
    (DeviceStatus.ACCEPTED, AdmissionEvent.DECOMMISSION): DeviceStatus.DECOMMISSIONED,
    (DeviceStatus.REJECTED, AdmissionEvent.DECOMMISSION): DeviceStatus.DECOMMISSIONED,
}


def admission_transition(status: DeviceStatus, event: AdmissionEvent) -> DeviceStatus:
    """The admission status after ``event``; an event that does not apply raises ``IllegalTransition``."""
    try:
        return _ADMISSION[(status, event)]
    except KeyError:
        raise IllegalTransition(f"a {status.value} device cannot be {_PAST[event]}") from None


_PAST = {
    AdmissionEvent.ACCEPT: "accepted",
    AdmissionEvent.REJECT: "rejected",
    AdmissionEvent.DECOMMISSION: "decommissioned",
}


def can_receive_updates(status: DeviceStatus) -> bool:
    """Only admitted devices are sent updates."""
    return status is DeviceStatus.ACCEPTED


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def combined_condition(condition: str | None, tags: dict[str, str]) -> Condition | None:
    """One condition for a text condition AND'ed with ``tags.<key> = '<value>'`` filters."""
    parts: list[str] = []
    if condition is not None:
        parse_condition(condition)  # alone first, so a syntax error names the user's own position
        if condition.strip() != "*":
            parts.append(f"({condition})")
    parts += [f"tags[{_quoted(key)}] = {_quoted(value)}" for key, value in sorted(tags.items())]
    return parse_condition(" AND ".join(parts)) if parts else None
