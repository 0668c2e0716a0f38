"""Engine creation and in-place schema migration."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import SQLAlchemyError

from ota_core.errors import ServiceUnavailable

MIGRATIONS = Path(__file__).with_name("migrations")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the HTTP side read while the bridge writes; busy_timeout makes
    # concurrent writers wait instead of failing with "database is locked".
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


@dataclass(frozen=True)
class Database:
    engine: Engine

    def dispose(self) -> None:
        self.engine.dispose()


#: Arbitrary constant naming our migration lock in PostgreSQL's advisory-lock space.
_PG_MIGRATION_LOCK = 0x07A0_0001


@contextmanager
def _sqlite_migration_lock(engine: Engine) -> Iterator[None]:
    """Serialise migrations between processes that share one SQLite file.

    Two services started together (``ota http`` and ``ota bridge``) would both
    try to create the schema of a fresh database; SQLite's own locking does not
    cover Alembic's check-then-create, so a lock file beside the database does.
    """
    database = engine.url.database
    if not database or database == ":memory:":
        yield
        return
    lock_path = Path(database).with_name(Path(database).name + ".migrate-lock")
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision, upgrading an existing database in place.

    Safe when several processes start at once: they take turns (a file lock for
    SQLite, a transaction-scoped advisory lock for PostgreSQL), and the later ones
    find nothing left to do.
    """
    # Imported here: processes that only read and write (the registry writer) skip
    # Alembic (~10 MB of imports).
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    lock = _sqlite_migration_lock(engine) if engine.dialect.name == "sqlite" else nullcontext()
    with lock, engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK}
            )
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def open_database(url: str, *, run_migrations: bool = True) -> Database:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    connect_args: dict[str, Any] = {}
    if url.startswith("postgresql+psycopg:"):
        # No server-side prepared statements: psycopg prepares a statement after five
        # runs, and PostgreSQL may then keep one generic plan for it, costed against the
        # table as it was. The registry's ``device_id IN (…)`` lookup, planned while a new
        # fleet's table was nearly empty, stayed a sequential scan as the fleet grew
        # (~1 s per batch at 50,000 devices) until an ANALYZE. Planning each time costs
        # tens of microseconds.
        connect_args["prepare_threshold"] = None
    engine = create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    try:
        if run_migrations:
            migrate(engine)
    except SQLAlchemyError as e:
        engine.dispose()
        raise ServiceUnavailable(f"cannot open the database {engine.url!r}: {e}") from e
    return Database(engine)
