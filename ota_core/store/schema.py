"""Table definitions. Changes here need an Alembic revision in ``migrations/versions``."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    Index,
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
    # The admin device list's filters (migration 0003); device id second, for its order.
    Index("ix_devices_version", "version", "device_id"),
    Index("ix_devices_last_state", "last_state", "device_id"),
    Index("ix_devices_channel", "channel", "device_id"),
    Index("ix_devices_hardware", "hardware", "device_id"),
    Index("ix_devices_last_seen", "last_seen"),
)

rollouts = Table(
    "rollouts",
    metadata,
    Column("rollout_id", Integer, primary_key=True, autoincrement=True),
    Column("build_id", String(64), nullable=False, index=True),
    Column("stages", Text, nullable=False),  # JSON list of percentages
    Column("stage_index", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("channel", String(64), nullable=True),
    Column("hardware", String(64), nullable=True),
    Column("device_ids", Text, nullable=True),  # JSON list, or NULL for "any device"
    Column("failure_threshold_percent", Float, nullable=False),
    Column("failure_min_count", Integer, nullable=False),
    Column("auto_advance_seconds", Integer, nullable=True),
    Column("stage_started_at", Float, nullable=False),
    Column("reason", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

rollout_log = Table(
    "rollout_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("rollout_id", Integer, nullable=False, index=True),
    Column("at", Float, nullable=False),
    Column("state", String(16), nullable=False),
    Column("percent", Float, nullable=False),
    Column("note", Text, nullable=True),
)

# One row per (device, offered build): the install state machine of ota_core.rollouts.
device_installs = Table(
    "device_installs",
    metadata,
    Column("device_id", String(64), primary_key=True),
    Column("build_id", String(64), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("rollout_id", Integer, nullable=True),
    Column("stage_index", Integer, nullable=True),
    Column("offered_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("detail", Text, nullable=True),
    Index("ix_device_installs_build_state", "build_id", "state"),
)

device_events = Table(
    "device_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("device_id", String(64), nullable=False),
    Column("at", Float, nullable=False),
    Column("kind", String(16), nullable=False),  # announce | offer | status
    Column("build_id", String(64), nullable=True),
    Column("state", String(16), nullable=True),
    Column("detail", Text, nullable=True),
    Index("ix_device_events_device", "device_id", "id"),
)
