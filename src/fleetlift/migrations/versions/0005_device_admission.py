"""device admission: identity, public key, token revocation

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("identity", JSON_DOCUMENT, nullable=False, server_default="{}"))
        batch.add_column(sa.Column("public_key", sa.Text(), nullable=True))
        batch.add_column(sa.Column("key_fingerprint", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("tokens_valid_after", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("tokens_valid_after")
        batch.drop_column("key_fingerprint")
        batch.drop_column("public_key")
        batch.drop_column("identity")
