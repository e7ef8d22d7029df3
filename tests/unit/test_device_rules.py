"""Device admission transitions."""

from __future__ import annotations

import pytest

from fleetlift.devices.rules import AdmissionEvent, DeviceStatus, admission_transition, can_receive_updates
from fleetlift.errors import IllegalTransition

D, E = DeviceStatus, AdmissionEvent

ALLOWED = {
    (D.PENDING, E.ACCEPT): D.ACCEPTED,
    (D.PENDING, E.REJECT): D.REJECTED,
    (D.REJECTED, E.ACCEPT): D.ACCEPTED,
    (D.ACCEPTED, E.REJECT): D.REJECTED,
    (D.PENDING, E.DECOMMISSION): D.DECOMMISSIONED,
    (D.ACCEPTED, E.DECOMMISSION): D.DECOMMISSIONED,
    (D.REJECTED, E.DECOMMISSION): D.DECOMMISSIONED,
}


@pytest.mark.parametrize("status", list(D))
@pytest.mark.parametrize("event", list(E))
def test_admission_table(status: D, event: E) -> None:
    if (status, event) in ALLOWED:
        assert admission_transition(status, event) is ALLOWED[(status, event)]
    else:
        with pytest.raises(IllegalTransition):
            admission_transition(status, event)


def test_only_accepted_devices_get_updates() -> None:
    assert [s for s in D if can_receive_updates(s)] == [D.ACCEPTED]
