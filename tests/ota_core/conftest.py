from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from ota_core.catalog import Catalog, sign_release
from ota_core.models import Release
from ota_core.signing import ReleaseSigner, generate_release_key
from tests.support.postgres import PostgresServer

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="session")
def signer() -> ReleaseSigner:
    return ReleaseSigner(generate_release_key())


@pytest.fixture(scope="session")
def other_signer() -> ReleaseSigner:
    return ReleaseSigner(generate_release_key())


def make_release(
    signer: ReleaseSigner,
    build_id: str,
    version: str,
    counter: int,
    *,
    hardware: str | None = None,
    channel: str | None = None,
    sha256: str = "ab" * 32,
    size: int = 1234,
) -> Release:
    return sign_release(
        signer,
        build_id=build_id,
        version=version,
        filename=f"ota-{version}.zip",
        size=size,
        sha256=sha256,
        release_counter=counter,
        issued_at=NOW,
        hardware=hardware,
        channel=channel,
    )


@pytest.fixture(scope="session")
def catalog(signer: ReleaseSigner) -> Catalog:
    """1.0.0 (generic), 1.9.0 (generic), 1.10.0 (board-a only), 2.0.0 (beta channel only)."""
    return Catalog.of(
        [
            make_release(signer, "build-1000", "1.0.0", 1),
            make_release(signer, "build-1090", "1.9.0", 2),
            make_release(signer, "build-1100", "1.10.0", 3, hardware="board-a"),
            make_release(signer, "build-2000", "2.0.0", 4, channel="beta"),
        ],
        revision=7,
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same store tests run against SQLite and a real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'ota.sqlite3'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.new_database()
