"""Azure IoT hubs and the hub configurations of edge deployments

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "iothub_hubs",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("host_name", sa.String(length=255), nullable=False),
        sa.Column("auth", sa.String(length=16), nullable=False),
        sa.Column("key_name", sa.String(length=255), nullable=True),
        sa.Column("sealed_connection_string", sa.Text(), nullable=True),
        sa.Column("sync_condition", sa.Text(), nullable=True),
        sa.Column("sync_interval_seconds", sa.Integer(), nullable=False),
        sa.Column("last_sync_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_sync_status", sa.String(length=16), nullable=True),
        sa.Column("last_sync_error", sa.Text(), nullable=True),
        sa.Column("last_sync_counts", JSON_DOCUMENT, nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("row_version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("tenant_id", "id"),
        sa.UniqueConstraint("tenant_id", "name", name="uq_iothub_hubs_name"),
    )
    op.create_table(
        "iothub_configurations",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("deployment_id", sa.String(length=64), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("hub_id", sa.String(length=64), nullable=False),
        sa.Column("configuration_id", sa.String(length=128), nullable=False),
        sa.Column("layered", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("spec_hash", sa.String(length=64), nullable=True),
        sa.Column("hub_etag", sa.String(length=128), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_error_code", sa.String(length=64), nullable=True),
        sa.Column("hub_counts", JSON_DOCUMENT, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("refreshed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("tenant_id", "deployment_id", "revision"),
        sa.UniqueConstraint("tenant_id", "hub_id", "configuration_id", name="uq_iothub_configurations_id"),
    )
    op.create_index(
        "ix_iothub_configurations_hub_state", "iothub_configurations", ["tenant_id", "hub_id", "state"]
    )


def downgrade() -> None:
    op.drop_index("ix_iothub_configurations_hub_state", table_name="iothub_configurations")
    op.drop_table("iothub_configurations")
    op.drop_table("iothub_hubs")
