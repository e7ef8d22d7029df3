"""release validation verdicts

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

# Releases published before validation existed stay deployable: they were trusted then.
GRANDFATHERED: dict[str, object] = {
    "status": "passed",
    "checked_at": "1970-01-01T00:00:00+00:00",
    "checks": [],
    "override": None,
}


def upgrade() -> None:
    with op.batch_alter_table("releases") as batch:
        batch.add_column(
            sa.Column("validation", JSON_DOCUMENT, nullable=False, server_default=json.dumps(GRANDFATHERED))
        )


def downgrade() -> None:
    with op.batch_alter_table("releases") as batch:
        batch.drop_column("validation")
