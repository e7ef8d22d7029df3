"""Artifact tables: the stored blobs (one per distinct content) and the artifacts naming them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, ForeignKeyConstraint, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from fleetlift.db import Base, JsonDocument, UtcDateTime


class Blob(Base):
    """Content stored once per tenant, however many artifacts name it."""

    __tablename__ = "blobs"

    tenant_id: Mapped[str] = mapped_column(String(64), ForeignKey("tenants.id"), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    storage_key: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Artifact(Base):
    __tablename__ = "artifacts"
    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "sha256"], ["blobs.tenant_id", "blobs.sha256"], name="fk_artifacts_blob"
        ),
        UniqueConstraint("tenant_id", "name", "version", name="uq_artifacts_name_version"),
        Index("ix_artifacts_tenant_sha256", "tenant_id", "sha256"),
    )

    tenant_id: Mapped[str] = mapped_column(String(64), ForeignKey("tenants.id"), primary_key=True)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(20))
    filename: Mapped[str] = mapped_column(String(200))
    device_types: Mapped[list[str]] = mapped_column(JsonDocument)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    uploaded_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    row_version: Mapped[int] = mapped_column(Integer, default=1)

    __mapper_args__ = {"version_id_col": row_version}  # noqa: RUF012


class ReleaseArtifact(Base):
    """Which releases use which artifacts: the foreign key refuses deleting one in use."""

    __tablename__ = "release_artifacts"
    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "release_id"],
            ["releases.tenant_id", "releases.id"],
            ondelete="CASCADE",
            name="fk_release_artifacts_release",
        ),
        ForeignKeyConstraint(
            ["tenant_id", "artifact_id"],
            ["artifacts.tenant_id", "artifacts.id"],
            name="fk_release_artifacts_artifact",
        ),
        Index("ix_release_artifacts_artifact", "tenant_id", "artifact_id"),
    )

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    release_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    artifact_id: Mapped[str] = mapped_column(String(64), primary_key=True)
