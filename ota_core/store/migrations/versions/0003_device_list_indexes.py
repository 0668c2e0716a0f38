"""Indexes for the admin device list at fleet scale (filters on version, status, channel,
hardware and last seen; pages in device id order).

Each equality filter's index carries ``device_id`` too, so a filtered page is read
in device id order straight from the index (no sort of every match) and its count
is an index-only scan.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

#: name -> columns; kept in step with ``ota_core.store.schema.devices``.
INDEXES = {
    "ix_devices_version": ["version", "device_id"],
    "ix_devices_last_state": ["last_state", "device_id"],
    "ix_devices_channel": ["channel", "device_id"],
    "ix_devices_hardware": ["hardware", "device_id"],
    "ix_devices_last_seen": ["last_seen"],
}


def upgrade() -> None:
    for name, columns in INDEXES.items():
        op.create_index(name, "devices", columns)


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, table_name="devices")
