"""The batched DeviceRegistry write path against the event-by-event one it replaced.

``reference_apply`` below is the registry's former implementation (one event at
a time, a few statements each), kept here as the specification: for any
sequence of events, cut into batches anyhow, the batched registry must leave
the devices, install rows and history exactly as the reference does.

Everything here runs on SQLite and on a real PostgreSQL (the session's throwaway
cluster, `postgres_server` in tests/conftest.py).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import and_, delete, insert, select, update
from sqlalchemy.engine import Connection

from ota_core.models import Announcement, DeviceState, StatusReport
from ota_core.rollouts import next_install_state
from ota_core.store import Database, DeviceRegistry, open_database
from ota_core.store.devices import (
    AnnouncementSeen,
    OfferPushed,
    RegistryEvent,
    StatusSeen,
)
from ota_core.store.rollouts import rollout_ids_for
from ota_core.store.schema import device_events, device_installs, devices, rollouts
from tests.support.postgres import PostgresServer

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


# -- the former implementation, event by event ------------------------------------------


def _event(
    conn: Connection,
    device_id: str,
    at: float,
    kind: str,
    build: str | None,
    state: str | None,
    detail: str | None,
) -> None:
    conn.execute(
        insert(device_events).values(
            device_id=device_id, at=at, kind=kind, build_id=build, state=state, detail=detail
        )
    )


def _record_offer(conn: Connection, device_id: str, build_id: str, at: float) -> bool:
    current = conn.execute(
        select(device_installs.c.state).where(
            and_(device_installs.c.device_id == device_id, device_installs.c.build_id == build_id)
        )
    ).first()
    if current is not None:
        return False
    rollout = rollout_ids_for(conn, [build_id]).get(build_id)
    conn.execute(
        insert(device_installs).values(
            device_id=device_id,
            build_id=build_id,
            state="offered",
            rollout_id=rollout[0] if rollout else None,
            stage_index=rollout[1] if rollout else None,
            offered_at=at,
            updated_at=at,
        )
    )
    _event(conn, device_id, at, "offer", build_id, None, None)
    return True


def _advance(conn: Connection, device_id: str, report: StatusReport, at: float) -> bool:
    key = and_(
        device_installs.c.device_id == device_id, device_installs.c.build_id == report.build_id
    )
    row = conn.execute(select(device_installs.c.state).where(key)).first()
    if row is None:
        rollout = rollout_ids_for(conn, [report.build_id]).get(report.build_id)
        conn.execute(
            insert(device_installs).values(
                device_id=device_id,
                build_id=report.build_id,
                state=report.state.value,
                rollout_id=rollout[0] if rollout else None,
                stage_index=rollout[1] if rollout else None,
                offered_at=at,
                updated_at=at,
                detail=report.detail,
            )
        )
        return True
    new_state = next_install_state(row[0], report.state)
    if new_state is None:
        return False
    conn.execute(
        update(device_installs)
        .where(key)
        .values(state=new_state, updated_at=at, detail=report.detail)
    )
    return True


def _apply_one(conn: Connection, event: RegistryEvent) -> None:
    exists = conn.execute(
        select(devices.c.device_id).where(devices.c.device_id == event.device_id)
    ).first()
    at = event.at.timestamp()
    values: dict[str, Any]
    if isinstance(event, OfferPushed):
        if _record_offer(conn, event.device_id, event.build_id, at) and exists:
            conn.execute(
                devices.update()
                .where(devices.c.device_id == event.device_id)
                .values(last_offered_build=event.build_id)
            )
        return
    if isinstance(event, AnnouncementSeen):
        ann = event.announcement
        values = {"build_id": ann.build_id, "last_seen": event.at}
        if event.offered_build is not None or not exists:
            values["last_offered_build"] = event.offered_build
        for name in ("version", "hardware", "channel"):
            value = getattr(ann, name)
            if value is not None or not exists:
                values[name] = value
        _event(conn, event.device_id, at, "announce", ann.build_id, None, None)
        conn.execute(
            update(device_installs)
            .where(
                and_(
                    device_installs.c.device_id == event.device_id,
                    device_installs.c.build_id == ann.build_id,
                    device_installs.c.state != "installed",
                )
            )
            .values(state="installed", updated_at=at, detail="announced running this build")
        )
        if event.offered_build is not None and event.offered_build != ann.build_id:
            _record_offer(conn, event.device_id, event.offered_build, at)
    else:
        report = event.report
        _event(
            conn, event.device_id, at, "status", report.build_id, report.state.value, report.detail
        )
        if not _advance(conn, event.device_id, report, at):
            if exists:
                conn.execute(
                    devices.update()
                    .where(devices.c.device_id == event.device_id)
                    .values(last_seen=event.at)
                )
            return
        values = {
            "last_seen": event.at,
            "last_state": report.state.value,
            "last_state_build": report.build_id,
            "last_detail": report.detail,
            "last_status_at": event.at,
        }
    if exists:
        conn.execute(
            devices.update().where(devices.c.device_id == event.device_id).values(**values)
        )
    else:
        conn.execute(devices.insert().values(device_id=event.device_id, **values))


def reference_apply(database: Database, events: Sequence[RegistryEvent]) -> None:
    with database.engine.begin() as conn:
        for event in events:
            _apply_one(conn, event)


# -- comparing two databases -------------------------------------------------------------


def snapshot(database: Database) -> dict[str, list[tuple[Any, ...]]]:
    with database.engine.connect() as conn:
        return {
            "devices": [
                tuple(r) for r in conn.execute(select(devices).order_by(devices.c.device_id))
            ],
            "installs": [
                tuple(r)
                for r in conn.execute(
                    select(device_installs).order_by(
                        device_installs.c.device_id, device_installs.c.build_id
                    )
                )
            ],
            # ids differ in value between databases only if the order differs: compare order
            "history": [
                tuple(r)[1:]
                for r in conn.execute(select(device_events).order_by(device_events.c.id))
            ],
        }


def clear(database: Database) -> None:
    with database.engine.begin() as conn:
        for table in (devices, device_installs, device_events):
            conn.execute(delete(table))


def add_rollout(database: Database, build_id: str, stage_index: int) -> None:
    with database.engine.begin() as conn:
        conn.execute(
            insert(rollouts).values(
                build_id=build_id,
                stages="[10.0, 50.0, 100.0]",
                stage_index=stage_index,
                state="active",
                failure_threshold_percent=10.0,
                failure_min_count=5,
                stage_started_at=0.0,
                created_at=0.0,
                updated_at=0.0,
            )
        )


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A function returning a new, empty database URL of the backend under test."""
    if request.param == "sqlite":
        folder: Path = tmp_path_factory.mktemp("registry-batch")
        names = iter(range(1_000))
        return lambda: f"sqlite:///{folder / f'db{next(names)}.sqlite3'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.new_database


@pytest.fixture(scope="module")
def databases(backend: Any) -> Iterator[tuple[Database, Database]]:
    pair = (open_database(backend()), open_database(backend()))
    for db in pair:
        add_rollout(db, "b3", 1)
    yield pair
    for db in pair:
        db.dispose()


DEVICES = st.sampled_from(["d1", "d2", "d3"])
BUILDS = st.sampled_from(["b1", "b2", "b3"])
OPTIONAL = st.none() | st.sampled_from(["x", "y"])


@st.composite
def events(draw: st.DrawFn) -> RegistryEvent:
    device = draw(DEVICES)
    at = T0 + timedelta(seconds=draw(st.integers(0, 50)))
    kind = draw(st.sampled_from(["announce", "status", "push"]))
    if kind == "announce":
        version = draw(st.none() | st.sampled_from(["1.0.0", "2.0.0"]))
        announcement = Announcement(
            build_id=draw(BUILDS),
            version=version,
            hardware=draw(OPTIONAL),
            channel=draw(OPTIONAL),
        )
        return AnnouncementSeen(device, announcement, draw(st.none() | BUILDS), at)
    if kind == "status":
        report = StatusReport(
            state=draw(st.sampled_from(list(DeviceState))),
            build_id=draw(BUILDS),
            detail=draw(st.none() | st.sampled_from(["disk", "ok"])),
        )
        return StatusSeen(device, report, at)
    return OfferPushed(device, draw(BUILDS), at)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    sequence=st.lists(events(), min_size=1, max_size=30),
    cuts=st.lists(st.integers(1, 30), max_size=4),
)
def test_batched_writes_equal_event_by_event_writes(
    databases: tuple[Database, Database], sequence: list[RegistryEvent], cuts: list[int]
) -> None:
    batched_db, reference_db = databases
    clear(batched_db)
    clear(reference_db)
    registry = DeviceRegistry(batched_db)
    bounds = sorted({0, len(sequence), *(c for c in cuts if c < len(sequence))})
    for start, end in itertools.pairwise(bounds):
        registry.apply(sequence[start:end])
    for event in sequence:  # the reference commits each event on its own
        reference_apply(reference_db, [event])
    assert snapshot(batched_db) == snapshot(reference_db)


def test_claim_offers_records_each_pair_once_and_returns_only_new_claims(
    databases: tuple[Database, Database],
) -> None:
    db, _ = databases
    clear(db)
    registry = DeviceRegistry(db)
    ann = Announcement(build_id="b1", version="1.0.0")
    registry.apply([AnnouncementSeen("d1", ann, "b2", T0)])  # answered: offered b2
    pushes = [
        OfferPushed("d1", "b2", T0),
        OfferPushed("d2", "b2", T0),
        OfferPushed("d1", "b3", T0),
        OfferPushed("d1", "b3", T0),
    ]
    claimed = registry.claim_offers(pushes)
    assert claimed == [OfferPushed("d2", "b2", T0), OfferPushed("d1", "b3", T0)]
    assert registry.claim_offers(pushes) == []
    record = registry.get("d1")
    assert record is not None and record.last_offered_build == "b3"
    assert registry.get("d2") is None  # a push never creates a device row
    installs = {
        (i["build_id"], i["state"], i["rollout_id"] is not None, i["stage_index"])
        for i in registry.installs("d1")
    }
    assert installs == {("b2", "offered", False, None), ("b3", "offered", True, 1)}
    assert registry.existing_installs(["d1", "d2", "d3"], ["b2", "b3"]) == {
        ("d1", "b2"),
        ("d2", "b2"),
        ("d1", "b3"),
    }


def test_concurrent_claims_hand_each_pair_to_exactly_one_claimer(backend: Any) -> None:
    url = backend()
    open_database(url).dispose()
    # Separate engines, as separate bridge processes have.
    registries = [DeviceRegistry(open_database(url, run_migrations=False)) for _ in range(4)]
    pushes = [OfferPushed(f"d{n}", "b9", T0) for n in range(300)]
    results: list[list[OfferPushed]] = [[] for _ in registries]

    def claim(index: int) -> None:
        for start in range(0, len(pushes), 50):
            results[index].extend(registries[index].claim_offers(pushes[start : start + 50]))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(registries))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    claimed = [p for result in results for p in result]
    assert sorted(p.device_id for p in claimed) == sorted(p.device_id for p in pushes)
    for registry in registries:
        registry._engine.dispose()


def test_known_devices_pages_through_announced_devices(
    databases: tuple[Database, Database],
) -> None:
    db, _ = databases
    clear(db)
    registry = DeviceRegistry(db)
    registry.apply(
        [
            AnnouncementSeen(f"d{n:03d}", Announcement(build_id="b1", channel="c"), None, T0)
            for n in range(25)
        ]
        + [StatusSeen("s-only", StatusReport(state=DeviceState.FAILED, build_id="b1"), T0)]
    )
    seen: list[str] = []
    after = None
    while page := registry.known_devices(after, limit=10):
        seen += [d.device_id for d in page]
        after = page[-1].device_id
    assert seen == [f"d{n:03d}" for n in range(25)]  # never announced: nothing to decide
    assert registry.known_devices(limit=1)[0].channel == "c"


def test_concurrent_writers_lose_no_event(backend: Any) -> None:
    """Two bridges and the HTTP side writing about the same new devices at once."""
    url = backend()
    open_database(url).dispose()
    registries = [DeviceRegistry(open_database(url, run_migrations=False)) for _ in range(3)]
    device_ids = [f"c{n:03d}" for n in range(120)]
    errors: list[BaseException] = []

    def write(index: int) -> None:
        try:
            for start in range(0, len(device_ids), 40):
                batch: list[RegistryEvent] = []
                for device_id in device_ids[start : start + 40]:
                    at = T0 + timedelta(seconds=index)
                    batch.append(
                        AnnouncementSeen(
                            device_id, Announcement(build_id="b1", version="1.0.0"), "b2", at
                        )
                    )
                    batch.append(
                        StatusSeen(
                            device_id,
                            StatusReport(state=DeviceState.DOWNLOADING, build_id="b2"),
                            at,
                        )
                    )
                registries[index].apply(batch)
        except BaseException as e:  # reported below, with the assertion
            errors.append(e)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(len(registries))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    registry = registries[0]
    for device_id in device_ids[::17]:
        kinds = sorted(e["kind"] for e in registry.history(device_id))
        assert kinds == ["announce"] * 3 + ["offer"] + ["status"] * 3
        assert [(i["build_id"], i["state"]) for i in registry.installs(device_id)] == [
            ("b2", "downloading")
        ]
    assert len(registry.all()) == len(device_ids)
    for r in registries:
        r._engine.dispose()
