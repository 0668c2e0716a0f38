"""Several processes opening a fresh database at once all end with the schema, none fails."""

from __future__ import annotations

import multiprocessing

from sqlalchemy import inspect

from ota_core.store import open_database


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
