"""Table definitions. Changes here need an Alembic revision in ``migrations/versions``."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

releases = Table(
    "releases",
    metadata,
    Column("build_id", String(64), primary_key=True),
    Column("version", String(64), nullable=False),
    Column("filename", String(128), nullable=False, unique=True),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("signature", Text, nullable=False),
    Column("manifest", Text, nullable=False),
    Column("manifest_signature", Text, nullable=False),
    Column("key_id", String(16), nullable=False),
    Column("hardware", String(64), nullable=True),
    Column("channel", String(64), nullable=True),
    Column("release_counter", Integer, nullable=False, unique=True),
    Column("notes", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# One row: bumped in the same transaction as every catalog change, so readers
# (the bridge) can tell cheaply whether their snapshot is stale.
catalog_state = Table(
    "catalog_state",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("revision", BigInteger, nullable=False),
)

devices = Table(
    "devices",
    metadata,
    Column("device_id", String(64), primary_key=True),
    Column("hardware", String(64), nullable=True),
    Column("channel", String(64), nullable=True),
    Column("build_id", String(64), nullable=True),
    Column("version", String(64), nullable=True),
    Column("last_seen", DateTime(timezone=True), nullable=False),
    Column("last_offered_build", String(64), nullable=True),
    Column("last_state", String(16), nullable=True),
    Column("last_state_build", String(64), nullable=True),
    Column("last_detail", Text, nullable=True),
    Column("last_status_at", DateTime(timezone=True), nullable=True),
)
