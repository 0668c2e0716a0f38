"""Rollouts, their log, per-(device, build) install states and device history.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rollouts",
        sa.Column("rollout_id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("build_id", sa.String(64), nullable=False, index=True),
        sa.Column("stages", sa.Text, nullable=False),
        sa.Column("stage_index", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("channel", sa.String(64), nullable=True),
        sa.Column("hardware", sa.String(64), nullable=True),
        sa.Column("device_ids", sa.Text, nullable=True),
        sa.Column("failure_threshold_percent", sa.Float, nullable=False),
        sa.Column("failure_min_count", sa.Integer, nullable=False),
        sa.Column("auto_advance_seconds", sa.Integer, nullable=True),
        sa.Column("stage_started_at", sa.Float, nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "rollout_log",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("rollout_id", sa.Integer, nullable=False, index=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("percent", sa.Float, nullable=False),
        sa.Column("note", sa.Text, nullable=True),
    )
    op.create_table(
        "device_installs",
        sa.Column("device_id", sa.String(64), primary_key=True),
        sa.Column("build_id", sa.String(64), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("rollout_id", sa.Integer, nullable=True),
        sa.Column("stage_index", sa.Integer, nullable=True),
        sa.Column("offered_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("detail", sa.Text, nullable=True),
    )
    op.create_index("ix_device_installs_build_state", "device_installs", ["build_id", "state"])
    op.create_table(
        "device_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("build_id", sa.String(64), nullable=True),
        sa.Column("state", sa.String(16), nullable=True),
        sa.Column("detail", sa.Text, nullable=True),
    )
    op.create_index("ix_device_events_device", "device_events", ["device_id", "id"])


def downgrade() -> None:
    op.drop_table("device_events")
    op.drop_table("device_installs")
    op.drop_table("rollout_log")
    op.drop_table("rollouts")
