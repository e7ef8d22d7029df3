"""Use cases of enrollment tokens."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from fleetlift.audit import service as audit
from fleetlift.context import Caller
from fleetlift.db import utcnow
from fleetlift.enrollment.models import EnrollmentToken
from fleetlift.errors import NotFound
from fleetlift.ids import new_id

PREFIX = "flt_enr_"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create(
    *,
    session: Session,
    caller: Caller,
    name: str,
    valid_for: timedelta,
    max_uses: int | None,
    tags: dict[str, Any],
) -> tuple[EnrollmentToken, str]:
    """A new token, returned in clear exactly once."""
    token = PREFIX + secrets.token_urlsafe(32)
    now = utcnow()
    row = EnrollmentToken(
        tenant_id=caller.tenant_id,
        id=new_id("enr_"),
        token_hash=_hash(token),
        name=name,
        tags=tags,
        expires_at=now + valid_for,
        max_uses=max_uses,
        uses=0,
        created_by=caller.subject,
        created_at=now,
    )
    session.add(row)
    audit.record(
        session,
        caller=caller,
        action="enrollment.create",
        resource_type="enrollment_token",
        resource_id=row.id,
        status_code=201,
        details={"name": name, "max_uses": max_uses},
    )
    session.commit()
    return row, token


def list_tokens(*, session: Session, caller: Caller) -> Sequence[EnrollmentToken]:
    return session.scalars(
        select(EnrollmentToken)
        .where(EnrollmentToken.tenant_id == caller.tenant_id)
        .order_by(EnrollmentToken.id.desc())
    ).all()


def revoke(*, session: Session, caller: Caller, token_id: str) -> None:
    row = session.get(EnrollmentToken, (caller.tenant_id, token_id))
    if row is None:
        raise NotFound(f"no enrollment token '{token_id}' in this tenant")
    row.revoked_at = utcnow()
    audit.record(
        session,
        caller=caller,
        action="enrollment.revoke",
        resource_type="enrollment_token",
        resource_id=token_id,
        status_code=204,
    )
    session.commit()


def redeem(session: Session, *, tenant_id: str, token: str, now: datetime) -> EnrollmentToken | None:
    """Use one enrollment of a valid token (atomically, so max_uses holds under concurrency)."""
    if not token.startswith(PREFIX):
        return None
    row = session.scalars(
        select(EnrollmentToken).where(
            EnrollmentToken.tenant_id == tenant_id, EnrollmentToken.token_hash == _hash(token)
        )
    ).first()
    if row is None or row.revoked_at is not None or row.expires_at <= now:
        return None
    claimed = session.execute(
        update(EnrollmentToken)
        .where(
            EnrollmentToken.tenant_id == tenant_id,
            EnrollmentToken.id == row.id,
            (EnrollmentToken.max_uses.is_(None)) | (EnrollmentToken.uses < EnrollmentToken.max_uses),
        )
        .values(uses=EnrollmentToken.uses + 1)
        .execution_options(synchronize_session=False, preserve_rowcount=True)
    )
    return row if getattr(claimed, "rowcount", 0) == 1 else None
