"""Several processes opening a fresh database at once all end with the schema, none fails."""

from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, func, insert, inspect, select

import http_files  # noqa: F401  (admin and http_files import each other; the app's order)
from admin.fleet import DeviceFilter
from ota_core.store import open_database
from ota_core.store.database import MIGRATIONS
from ota_core.store.schema import devices

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def _open(url: str) -> None:
    open_database(url).dispose()


def test_concurrent_first_start_migrates_once(db_url: str) -> None:
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_open, args=(db_url,)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    tables = set(inspect(open_database(db_url).engine).get_table_names())
    assert {"releases", "devices", "rollouts", "device_installs", "alembic_version"} <= tables


# -- 0003: the admin device list's indexes --------------------------------------------

DEVICE_LIST_INDEXES = {
    "ix_devices_version": ["version", "device_id"],
    "ix_devices_last_state": ["last_state", "device_id"],
    "ix_devices_channel": ["channel", "device_id"],
    "ix_devices_hardware": ["hardware", "device_id"],
    "ix_devices_last_seen": ["last_seen"],
}


def _alembic(engine: Engine, action: str, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        getattr(command, action)(config, revision)


def _device_indexes(engine: Engine) -> dict[str, list[str]]:
    return {
        str(ix["name"]): [str(c) for c in ix["column_names"]]
        for ix in inspect(engine).get_indexes("devices")
    }


def test_0003_upgrades_a_0002_database_in_place_and_downgrades(db_url: str) -> None:
    if db_url.startswith("sqlite:///"):
        Path(db_url.removeprefix("sqlite:///")).parent.mkdir(parents=True)
    engine = create_engine(db_url)
    try:
        _alembic(engine, "upgrade", "0002")  # a database from before 0003, with a device
        with engine.begin() as conn:
            conn.execute(insert(devices).values(device_id="dev-1", last_seen=NOW, channel="beta"))
        assert _device_indexes(engine) == {}
    finally:
        engine.dispose()

    database = open_database(db_url)  # what every service does when it starts
    try:
        assert _device_indexes(database.engine) == DEVICE_LIST_INDEXES
        with database.engine.connect() as conn:
            assert conn.execute(select(devices.c.channel)).scalar_one() == "beta"
        _alembic(database.engine, "downgrade", "0002")
        assert _device_indexes(database.engine) == {}
    finally:
        database.dispose()


@pytest.mark.parametrize(
    ("wanted", "index"),
    [
        (DeviceFilter(version="1.2.0"), "ix_devices_version"),
        (DeviceFilter(status="failed"), "ix_devices_last_state"),
        (DeviceFilter(status="none"), "ix_devices_last_state"),
        (DeviceFilter(channel="beta"), "ix_devices_channel"),
        (DeviceFilter(hardware="board-a"), "ix_devices_hardware"),
    ],
)
def test_device_list_filters_use_their_index_on_sqlite(
    tmp_path: Path, wanted: DeviceFilter, index: str
) -> None:
    """The admin's page query and its count, as find_devices builds them (SQLite's plan
    does not depend on table statistics, so this is stable)."""
    database = open_database(f"sqlite:///{tmp_path / 'ota.sqlite3'}")
    try:
        page = wanted.where(select(devices), sqlite=True).order_by(devices.c.device_id).limit(100)
        count = wanted.where(select(func.count()).select_from(devices), sqlite=True)
        with database.engine.connect() as conn:
            for query in (page, count):
                sql = str(query.compile(database.engine, compile_kwargs={"literal_binds": True}))
                plan = " | ".join(
                    str(row[-1]) for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql)
                )
                assert index in plan, plan
    finally:
        database.dispose()


def test_device_count_by_last_seen_uses_its_index_on_sqlite(tmp_path: Path) -> None:
    """A range on last_seen: the count reads the index. (The page may walk the primary
    key in device id order instead, stopping after a page of matches: SQLite's choice.)"""
    database = open_database(f"sqlite:///{tmp_path / 'ota.sqlite3'}")
    try:
        wanted = DeviceFilter(seen_after=NOW, seen_before=NOW)
        count = wanted.where(select(func.count()).select_from(devices), sqlite=True)
        sql = str(count.compile(database.engine, compile_kwargs={"literal_binds": True}))
        with database.engine.connect() as conn:
            plan = " | ".join(
                str(row[-1]) for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql)
            )
        assert "ix_devices_last_seen" in plan, plan
    finally:
        database.dispose()
