"""PostgreSQL: the registry's statements are planned for the table as it is, not as it was.

psycopg prepares a statement on the server after a few executions, and
PostgreSQL may then settle on one *generic* plan for it, costed against the table
as it was then and kept until an ANALYZE. A registry that starts on a new, empty
fleet had its "which of these devices exist" lookup (``device_id IN (…)``, once
per batch) frozen into a sequential scan that compared every row with every id
(a generic plan cannot hash the parameter list); at 50,000-100,000 devices each
batch of 5,000 events took 0.5-1.6 s in that one statement (bench/footprint.py,
populating the registry). ``open_database`` turns server-side prepared
statements off, so every run is planned with its own values.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import text

from ota_core.models import Announcement
from ota_core.store import DeviceRegistry, open_database
from ota_core.store.devices import AnnouncementSeen
from tests.support.postgres import PostgresServer

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
ANNOUNCEMENT = Announcement.model_validate({"build_id": "b1", "version": "1.0.0"})
BATCH = 50  # the same number of ids every batch: one statement text, as psycopg sees it


def _batch(prefix: str) -> list[AnnouncementSeen]:
    return [AnnouncementSeen(f"{prefix}-{i:03d}", ANNOUNCEMENT, None, NOW) for i in range(BATCH)]


def test_registry_batches_never_run_on_a_generic_plan(postgres_server: PostgresServer) -> None:
    database = open_database(postgres_server.new_database())
    try:
        registry = DeviceRegistry(database)
        # A new deployment: batch after batch on a table that starts empty.
        for n in range(12):
            registry.apply(_batch(f"dev-{n}"))
        with database.engine.connect() as conn:  # the pool's one connection: the registry's
            assert database.engine.pool.checkedin() == 0  # no other connection in the pool
            reused = conn.execute(
                text(
                    "SELECT statement, generic_plans FROM pg_prepared_statements "
                    "WHERE generic_plans > 0"
                )
            ).all()
        assert reused == [], f"statements run on a plan made for an older table: {reused}"
    finally:
        database.dispose()
