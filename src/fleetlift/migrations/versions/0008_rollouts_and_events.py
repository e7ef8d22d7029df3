"""rollout policy and progress, waves of devices, the event log

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
SEQUENCE_64 = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("deployments") as table:
        table.add_column(sa.Column("policy", JSON_DOCUMENT, server_default=sa.text("'{}'"), nullable=False))
        table.add_column(
            sa.Column("rollout_state", sa.String(length=24), server_default="pending", nullable=False)
        )
        table.add_column(sa.Column("current_wave", sa.Integer(), server_default="0", nullable=False))
        table.add_column(sa.Column("wave_count", sa.Integer(), server_default="1", nullable=False))
        table.add_column(sa.Column("wave_opened_at", sa.DateTime(timezone=True), nullable=True))
        table.add_column(sa.Column("soak_until", sa.DateTime(timezone=True), nullable=True))
        table.add_column(sa.Column("approved_through", sa.Integer(), server_default="-1", nullable=False))
        table.add_column(sa.Column("halted_reason", sa.Text(), nullable=True))
        table.add_column(sa.Column("parent_deployment_id", sa.String(length=64), nullable=True))
    with op.batch_alter_table("deployment_devices") as table:
        table.add_column(sa.Column("wave", sa.Integer(), server_default="0", nullable=False))
        table.add_column(sa.Column("released_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_deployment_devices_wave", "deployment_devices", ["tenant_id", "deployment_id", "wave", "state"]
    )
    # Deployments that existed before rollouts had one wave, open since they were started.
    op.execute(
        "UPDATE deployments SET rollout_state = 'wave_open', wave_opened_at = created_at "
        "WHERE phase IN ('active', 'paused', 'cancelled')"
    )
    op.create_table(
        "events",
        sa.Column("seq", SEQUENCE_64, autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("deployment_id", sa.String(length=64), nullable=True),
        sa.Column("device_id", sa.String(length=128), nullable=True),
        sa.Column("data", JSON_DOCUMENT, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    op.create_index("ix_events_tenant_seq", "events", ["tenant_id", "seq"])
    op.create_index("ix_events_created", "events", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_events_created", table_name="events")
    op.drop_index("ix_events_tenant_seq", table_name="events")
    op.drop_table("events")
    op.drop_index("ix_deployment_devices_wave", table_name="deployment_devices")
    with op.batch_alter_table("deployment_devices") as table:
        table.drop_column("released_at")
        table.drop_column("wave")
    with op.batch_alter_table("deployments") as table:
        for column in (
            "parent_deployment_id",
            "halted_reason",
            "approved_through",
            "soak_until",
            "wave_opened_at",
            "wave_count",
            "current_wave",
            "rollout_state",
            "policy",
        ):
            table.drop_column(column)
