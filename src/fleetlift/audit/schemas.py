"""Output shape of the audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class AuditEntryRead(BaseModel):
    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "id": "aud_01JD3QB2W4X6Y8Z0A2C4E6G8J0",
                    "at": "2026-11-24T09:00:00Z",
                    "actor": "alice",
                    "roles": "operator",
                    "action": "deployments.create",
                    "resource_type": "deployment",
                    "resource_id": "dep_01JD3Q9T1C6B2V8N4M7K5X0ABC",
                    "outcome": "success",
                    "status_code": 201,
                    "request_id": "req_01JD3QB2VZ7K9M1N3P5R7T9V1X",
                    "details": {"release_id": "rel_01JD3Q6R8W2M5E0B9N4T7K1XYZ"},
                }
            ]
        },
    )

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
