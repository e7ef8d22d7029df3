"""The built-in device channel: wake this process's long polls of the tenant.

Devices waiting in a long poll on this process re-check at once; those on other server processes
see the change at their next re-check (``device_api.poll.RECHECK_SECONDS``), and devices polling
on an interval at their next poll. Nothing leaves the process."""

from __future__ import annotations

from collections.abc import Sequence

from fleetlift.device_api.poll import PollNotifier


class LongPollChannel:
    """Signals the ``PollNotifier`` that the device poll sleeps on."""

    def __init__(self, notifier: PollNotifier) -> None:
        self.notifier = notifier

    async def notify(self, tenant_id: str, device_ids: Sequence[str]) -> int:
        """Wake the tenant's waiting polls; every device is told (how many there are)."""
        if not device_ids:
            return 0
        self.notifier.signal([tenant_id])
        return len(device_ids)

    async def close(self) -> None:
        """Nothing to release."""
