"""An in-memory device channel for unit tests: it remembers what it was asked to send."""

from __future__ import annotations

from collections.abc import Sequence


class MemoryChannel:
    """Records each ``notify`` as ``(tenant_id, device_ids)``."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple[str, ...]]] = []
        self.closed = False

    async def notify(self, tenant_id: str, device_ids: Sequence[str]) -> int:
        """Remember the devices; all of them count as sent."""
        if device_ids:
            self.sent.append((tenant_id, tuple(device_ids)))
        return len(device_ids)

    def devices(self, tenant_id: str | None = None) -> list[str]:
        """Every device notified (of one tenant), in order, repeats included."""
        return [d for tenant, ids in self.sent if tenant_id in (None, tenant) for d in ids]

    async def close(self) -> None:
        self.closed = True
