"""Registry write-behind in a child process, on a real SQLite database."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from broker_bridge.writer_process import ProcessRegistryWriter, decode_event, encode_event
from ota_core.models import Announcement, DeviceState, StatusReport
from ota_core.store import Database, DeviceRegistry, open_database
from ota_core.store.devices import AnnouncementSeen, OfferPushed, RegistryEvent, StatusSeen

T0 = datetime(2026, 11, 25, 12, 0, 0, 123456, tzinfo=UTC)
WAIT = 30.0


def seen(device: str, build: str, step: int, offered: str | None = None) -> AnnouncementSeen:
    return AnnouncementSeen(
        device,
        Announcement(build_id=build, version="1.0.0", request_id=f"r-{step}"),
        offered,
        T0 + timedelta(seconds=step),
    )


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'registry.sqlite3'}"


@pytest.fixture
def database(url: str) -> Iterator[Database]:
    db = open_database(url)  # migrated here, as the bridge's own Services would
    yield db
    db.dispose()


@pytest.fixture
def writer(url: str, database: Database) -> Iterator[ProcessRegistryWriter]:
    w = ProcessRegistryWriter(url, log_level="WARNING")
    w.start()
    yield w
    w.stop()


EVENTS: list[RegistryEvent] = [
    seen("dev-1", "build-1", 1, offered="build-2"),
    AnnouncementSeen(
        "dev-2",
        Announcement(
            build_id="b", version=None, hardware="board-a", channel="beta", device_id="dev-2"
        ),
        None,
        T0,
    ),
    StatusSeen("dev-1", StatusReport(state=DeviceState.FAILED, build_id="build-2",
                                     detail='bad "sig" \\ here', request_id="r-1"), T0),
    StatusSeen("dev-3", StatusReport(state=DeviceState.INSTALLED, build_id="build-2"), T0),
    OfferPushed("dev-4", "build-2", T0 + timedelta(microseconds=1)),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_events_cross_the_pipe_unchanged(event: RegistryEvent) -> None:
    assert decode_event(encode_event(event)) == event


def test_events_are_written_by_the_child_and_flush_waits_for_them(
    writer: ProcessRegistryWriter, database: Database
) -> None:
    for step in range(1000):
        writer.put(seen(f"dev-{step % 100}", "build-1", step, offered="build-2"))
    assert writer.flush(WAIT)
    assert writer.backlog == 0
    assert writer.written == 1000
    registry = DeviceRegistry(database)
    records = {r.device_id: r for r in registry.all()}
    assert len(records) == 100
    # The last announcement of each device wins, as if written one by one.
    assert records["dev-7"].last_seen == T0 + timedelta(seconds=907)
    assert records["dev-7"].last_offered_build == "build-2"
    assert writer.pid is not None and writer.pid != os.getpid()


def test_stop_writes_what_is_still_queued(url: str, database: Database) -> None:
    w = ProcessRegistryWriter(url, log_level="WARNING")
    w.start()
    for step in range(300):
        w.put(seen(f"dev-{step}", "build-1", step))
    assert w.stop() == 0
    assert len(DeviceRegistry(database).all()) == 300


def test_a_killed_child_is_replaced_and_what_it_held_is_counted(
    writer: ProcessRegistryWriter, database: Database
) -> None:
    writer.put(seen("before", "build-1", 1))
    assert writer.flush(WAIT)
    first = writer.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + WAIT
    while (writer.pid in (None, first)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert writer.pid not in (None, first), "no new registry writer process"
    assert writer.failures >= 1
    # Events after the crash are written by the new child; nothing earlier is redone.
    for step in range(50):
        writer.put(seen(f"after-{step}", "build-1", step))
    assert writer.flush(WAIT)
    ids = {r.device_id for r in DeviceRegistry(database).all()}
    assert "before" in ids and {f"after-{s}" for s in range(50)} <= ids
    assert writer.written == 51


def test_a_full_backlog_drops_the_oldest_events(url: str, database: Database) -> None:
    w = ProcessRegistryWriter(url, log_level="WARNING", max_backlog=10)
    for step in range(15):  # not started yet: everything waits in the parent
        w.put(seen(f"dev-{step}", "build-1", step))
    assert (w.backlog, w.dropped) == (10, 5)
    w.start()
    try:
        assert w.flush(WAIT)
    finally:
        w.stop()
    ids = {r.device_id for r in DeviceRegistry(database).all()}
    assert ids == {f"dev-{step}" for step in range(5, 15)}


PARENT = """
import sys, time
from datetime import UTC, datetime
from broker_bridge.writer_process import ProcessRegistryWriter
from ota_core.models import Announcement
from ota_core.store.devices import AnnouncementSeen

w = ProcessRegistryWriter(sys.argv[1], log_level="WARNING")
w.start()
for i in range(100):
    w.put(AnnouncementSeen(f"dev-{i}", Announcement(build_id="b"), None, datetime.now(UTC)))
assert w.flush(30)
for i in range(100, 150):
    w.put(AnnouncementSeen(f"dev-{i}", Announcement(build_id="b"), None, datetime.now(UTC)))
print(w.pid, flush=True)
time.sleep(60)
"""


def test_the_child_exits_when_the_bridge_is_killed(url: str, database: Database) -> None:
    import subprocess
    import sys

    import psutil

    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        child = psutil.Process(int(parent.stdout.readline()))
        parent.kill()
        parent.wait(10)
        # No orphan: the child sees the pipe close, writes what it holds, and exits.
        child.wait(30)
    finally:
        if parent.poll() is None:
            parent.kill()
    ids = {r.device_id for r in DeviceRegistry(database).all()}
    assert {f"dev-{i}" for i in range(100)} <= ids


def test_ctrl_c_and_sigterm_to_the_group_leave_the_child_to_the_bridge(
    writer: ProcessRegistryWriter, database: Database
) -> None:
    """A terminal's Ctrl-C or a service manager's SIGTERM reaches the child too; it keeps
    writing until the bridge tells it to stop, so nothing queued is lost."""
    pid = writer.pid
    assert pid is not None
    writer.put(seen("warm-up", "build-1", 0))
    assert writer.flush(WAIT)  # the child is up, its handlers installed
    os.kill(pid, signal.SIGINT)
    os.kill(pid, signal.SIGTERM)
    for step in range(100):
        writer.put(seen(f"dev-{step}", "build-1", step))
    assert writer.flush(WAIT)
    assert writer.pid == pid and writer.failures == 0
    assert len(DeviceRegistry(database).all()) == 101
