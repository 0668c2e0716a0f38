"""Write-behind registry writer on a real SQLite database."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from broker_bridge.writer import RegistryWriter
from ota_core.models import Announcement, DeviceState, StatusReport
from ota_core.store import Database, DeviceRegistry, open_database
from ota_core.store.devices import AnnouncementSeen, RegistryEvent, StatusSeen

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
WAIT = 20.0


def seen(device: str, build: str, step: int, **fields: str) -> AnnouncementSeen:
    return AnnouncementSeen(
        device, Announcement(build_id=build, **fields), None, T0 + timedelta(seconds=step)
    )


def status(device: str, state: str, build: str, step: int) -> StatusSeen:
    return StatusSeen(
        device,
        StatusReport(state=DeviceState(state), build_id=build),
        T0 + timedelta(seconds=step),
    )


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    db = open_database(f"sqlite:///{tmp_path / 'registry.sqlite3'}")
    yield db
    db.dispose()


@pytest.fixture
def registry(database: Database) -> DeviceRegistry:
    return DeviceRegistry(database)


def test_events_reach_the_registry_in_arrival_order(registry: DeviceRegistry) -> None:
    batches: list[list[RegistryEvent]] = []

    def apply(batch: Sequence[RegistryEvent]) -> None:
        registry.apply(batch)
        batches.append(list(batch))

    events: list[RegistryEvent] = [
        seen("a", "b1", 1, version="1.0.0", hardware="board-a"),
        status("a", "downloading", "b2", 2),
        seen("a", "b1", 3),
        status("a", "installing", "b2", 4),
        status("a", "installed", "b2", 5),
    ]
    writer = RegistryWriter(apply, max_batch=2)
    writer.start()
    try:
        for event in events:
            writer.put(event)
        assert writer.flush(WAIT)
    finally:
        writer.stop()
    assert [e for batch in batches for e in batch] == events  # nothing merged or reordered
    assert all(len(batch) <= 2 for batch in batches)
    a = registry.get("a")
    assert a is not None
    assert (a.build_id, a.version, a.hardware) == ("b1", "1.0.0", "board-a")
    assert (a.last_state, a.last_seen) == ("installed", T0 + timedelta(seconds=5))


def test_events_are_written_behind_and_flush_waits_for_them(registry: DeviceRegistry) -> None:
    writer = RegistryWriter(registry.apply, max_batch=7)
    writer.start()
    try:
        for i in range(100):
            writer.put(seen(f"dev-{i}", "b1", i))
        writer.put(status("dev-3", "installed", "b2", 200))
        assert writer.flush(WAIT)
        assert len(registry.all()) == 100
        record = registry.get("dev-3")
        assert record is not None and record.last_state == "installed"
        assert writer.written == 101
    finally:
        writer.stop()


def test_stop_writes_what_is_still_queued(registry: DeviceRegistry) -> None:
    writer = RegistryWriter(registry.apply, linger=5.0)  # would wait long without stop()
    writer.start()
    for i in range(10):
        writer.put(seen(f"dev-{i}", "b1", i))
    assert writer.stop() == 0
    assert len(registry.all()) == 10


def test_failed_writes_are_kept_and_retried_until_the_database_is_back(
    database: Database, registry: DeviceRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    # A real outage: the table disappears under the writer, then comes back.
    with database.engine.begin() as conn:
        conn.execute(text("ALTER TABLE devices RENAME TO devices_away"))
    writer = RegistryWriter(registry.apply, retry_min=0.05, retry_max=0.2)
    writer.start()
    try:
        for i in range(50):
            writer.put(seen(f"dev-{i}", "b1", i))  # returns at once although writes fail
        for i in range(50):
            writer.put(status(f"dev-{i}", "installed", "b2", 100 + i))
        assert not writer.flush(1.0)  # cannot finish while the table is gone
        assert writer.failures >= 1
        with database.engine.begin() as conn:
            conn.execute(text("ALTER TABLE devices_away RENAME TO devices"))
        assert writer.flush(WAIT)
    finally:
        assert writer.stop() == 0
    records = registry.all()
    assert len(records) == 50
    assert all(r.last_state == "installed" and r.build_id == "b1" for r in records)
    assert "registry write failed; keeping events and retrying" in caplog.text


def test_events_that_cannot_be_written_at_shutdown_are_counted_and_logged(
    database: Database, registry: DeviceRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    with database.engine.begin() as conn:
        conn.execute(text("DROP TABLE devices"))
    writer = RegistryWriter(registry.apply, retry_min=0.05, retry_max=0.1)
    writer.start()
    for i in range(3):
        writer.put(seen(f"dev-{i}", "b1", i))
    assert writer.stop(timeout=0.5) == 3
    assert "events lost events=3" in caplog.text


def test_a_full_backlog_drops_the_oldest_events_loudly(
    database: Database, registry: DeviceRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    with database.engine.begin() as conn:
        conn.execute(text("ALTER TABLE devices RENAME TO devices_away"))
    writer = RegistryWriter(registry.apply, max_batch=5, max_backlog=10, retry_min=0.05)
    writer.start()
    try:
        for i in range(40):
            writer.put(seen(f"dev-{i:02d}", "b1", i))
        # At most one batch in the writer's hands plus a full backlog survive.
        assert writer.dropped >= 40 - 10 - 5
        assert "registry backlog full; dropping the oldest device events" in caplog.text
        with database.engine.begin() as conn:
            conn.execute(text("ALTER TABLE devices_away RENAME TO devices"))
        assert writer.flush(WAIT)
    finally:
        writer.stop()
    kept = {r.device_id for r in registry.all()}
    assert len(kept) == 40 - writer.dropped
    assert {f"dev-{i:02d}" for i in range(30, 40)} <= kept  # the newest are kept
