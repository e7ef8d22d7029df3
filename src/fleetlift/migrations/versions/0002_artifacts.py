"""artifacts, their blobs, and the releases that use them

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "blobs",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("storage_key", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
        ),
        sa.PrimaryKeyConstraint("tenant_id", "sha256"),
    )
    op.create_table(
        "artifacts",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("version", sa.String(length=100), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("filename", sa.String(length=200), nullable=False),
        sa.Column("device_types", JSON_DOCUMENT, nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("uploaded_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("row_version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id", "sha256"], ["blobs.tenant_id", "blobs.sha256"], name="fk_artifacts_blob"
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
        ),
        sa.PrimaryKeyConstraint("tenant_id", "id"),
        sa.UniqueConstraint("tenant_id", "name", "version", name="uq_artifacts_name_version"),
    )
    with op.batch_alter_table("artifacts", schema=None) as batch_op:
        batch_op.create_index("ix_artifacts_tenant_sha256", ["tenant_id", "sha256"], unique=False)

    op.create_table(
        "release_artifacts",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("release_id", sa.String(length=64), nullable=False),
        sa.Column("artifact_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id", "artifact_id"],
            ["artifacts.tenant_id", "artifacts.id"],
            name="fk_release_artifacts_artifact",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "release_id"],
            ["releases.tenant_id", "releases.id"],
            name="fk_release_artifacts_release",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "release_id", "artifact_id"),
    )
    with op.batch_alter_table("release_artifacts", schema=None) as batch_op:
        batch_op.create_index("ix_release_artifacts_artifact", ["tenant_id", "artifact_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("release_artifacts", schema=None) as batch_op:
        batch_op.drop_index("ix_release_artifacts_artifact")

    op.drop_table("release_artifacts")
    with op.batch_alter_table("artifacts", schema=None) as batch_op:
        batch_op.drop_index("ix_artifacts_tenant_sha256")

    op.drop_table("artifacts")
    op.drop_table("blobs")
