"""Output shape of the audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class AuditEntryRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    at: datetime
    actor: str
    roles: str
    action: str
    resource_type: str
    resource_id: str | None
    outcome: Literal["success", "denied", "failed"]
    status_code: int
    request_id: str
    details: dict[str, Any]
