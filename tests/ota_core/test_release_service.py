"""ReleaseService against a real SQLite database and a real packages folder."""

import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ota_core.errors import (
    ChecksumMismatch,
    Conflict,
    InvalidFilename,
    NotFound,
    PackageNotFound,
    PayloadTooLarge,
)
from ota_core.models import Announcement, DeviceState, StatusReport
from ota_core.package_files import PackageFolder
from ota_core.releases import ReleaseRequest, ReleaseService, export_metadata
from ota_core.signing import ReleaseSigner
from ota_core.store import DeviceRegistry, ReleaseStore, open_database
from ota_core.store.devices import AnnouncementSeen, StatusSeen


@pytest.fixture
def service(tmp_path: Path, signer: ReleaseSigner, db_url: str) -> ReleaseService:
    db = open_database(db_url)
    return ReleaseService(ReleaseStore(db), PackageFolder(tmp_path / "packages"), signer)


def put(service: ReleaseService, name: str, content: bytes) -> None:
    (service.packages.root / name).write_bytes(content)


def leftovers(service: ReleaseService) -> list[str]:
    return sorted(p.name for p in service.packages.root.iterdir())


def test_add_existing_file_hashes_and_signs_it(
    service: ReleaseService, signer: ReleaseSigner
) -> None:
    content = os.urandom(3 * 1024 * 1024 + 7)  # several hashing chunks
    put(service, "ota-1.1.0.zip", content)
    release = service.add_existing(ReleaseRequest("build-1001", "1.1.0", "ota-1.1.0.zip"))
    assert release.sha256 == hashlib.sha256(content).hexdigest()
    assert release.size == len(content)
    signer.verifier.verify(release.sha256.encode(), release.signature, "checksum-signature")
    assert service.catalog().by_build["build-1001"] == release


def test_catalog_revision_moves_with_every_change(service: ReleaseService) -> None:
    start = service.store.revision()
    put(service, "a.bin", b"a")
    service.add_existing(ReleaseRequest("a", "1.0.0", "a.bin"))
    assert service.store.revision() == start + 1
    service.delete("a")
    assert service.store.revision() == start + 2


def test_duplicates_are_refused_with_409(service: ReleaseService) -> None:
    put(service, "a.bin", b"a")
    put(service, "b.bin", b"b")
    service.add_existing(ReleaseRequest("a", "1.0.0", "a.bin"))
    with pytest.raises(Conflict):
        service.add_existing(ReleaseRequest("a", "1.1.0", "b.bin"))
    with pytest.raises(Conflict):
        service.add_existing(ReleaseRequest("b", "1.1.0", "a.bin"))
    with pytest.raises(Conflict):
        service.add_existing(ReleaseRequest("b", "1.1.0", "b.bin", release_counter=1))
    assert [r.build_id for r in service.catalog()] == ["a"]


def test_upload_is_stored_atomically(service: ReleaseService) -> None:
    release = service.add_upload(ReleaseRequest("u", "2.0.0", "u.bin"), [b"abc", b"def"], 100)
    assert (service.packages.root / "u.bin").read_bytes() == b"abcdef"
    assert release.size == 6
    assert leftovers(service) == ["u.bin"]


def test_oversized_upload_leaves_nothing(service: ReleaseService) -> None:
    with pytest.raises(PayloadTooLarge):
        service.add_upload(ReleaseRequest("u", "2.0.0", "u.bin"), [b"x" * 60, b"x" * 60], 100)
    assert leftovers(service) == []
    assert len(service.catalog()) == 0


def test_checksum_mismatch_publishes_nothing(service: ReleaseService) -> None:
    with pytest.raises(ChecksumMismatch):
        service.add_upload(
            ReleaseRequest("u", "2.0.0", "u.bin"), [b"abc"], 100, expected_sha256="0" * 64
        )
    assert leftovers(service) == []
    assert len(service.catalog()) == 0
    good = hashlib.sha256(b"abc").hexdigest()
    assert (
        service.add_upload(ReleaseRequest("u", "2.0.0", "u.bin"), [b"abc"], 100, good).sha256
        == good
    )


def test_upload_never_overwrites_an_existing_file(service: ReleaseService) -> None:
    put(service, "keep.bin", b"original")
    with pytest.raises(Conflict):
        service.add_upload(ReleaseRequest("k", "1.0.0", "keep.bin"), [b"evil"], 100)
    assert (service.packages.root / "keep.bin").read_bytes() == b"original"


def test_failed_catalog_insert_removes_the_uploaded_file(service: ReleaseService) -> None:
    put(service, "a.bin", b"a")
    service.add_existing(ReleaseRequest("a", "1.0.0", "a.bin"))
    # Same build id: refused before any byte is written.
    with pytest.raises(Conflict):
        service.add_upload(ReleaseRequest("a", "1.1.0", "new.bin"), [b"n"], 100)
    assert leftovers(service) == ["a.bin"]


@pytest.mark.parametrize(
    "name", ["../etc/passwd", "/etc/passwd", "..", ".hidden", "a/b.bin", "a\x00b", "x" * 200, ""]
)
def test_traversal_and_odd_names_are_refused(service: ReleaseService, name: str) -> None:
    with pytest.raises(InvalidFilename):
        service.packages.resolve(name)
    with pytest.raises(InvalidFilename):
        service.add_upload(ReleaseRequest("t", "1.0.0", name), [b"x"], 100)


def test_symlink_pointing_outside_is_not_a_package(service: ReleaseService, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    (service.packages.root / "link.bin").symlink_to(secret)
    with pytest.raises(PackageNotFound):
        service.packages.resolve("link.bin")
    with pytest.raises(PackageNotFound):
        service.add_existing(ReleaseRequest("l", "1.0.0", "link.bin"))


def test_missing_file_and_missing_release(service: ReleaseService) -> None:
    with pytest.raises(PackageNotFound):
        service.add_existing(ReleaseRequest("m", "1.0.0", "missing.bin"))
    with pytest.raises(NotFound):
        service.delete("nope")


def test_delete_keeps_or_removes_the_file(service: ReleaseService) -> None:
    put(service, "a.bin", b"a")
    put(service, "b.bin", b"b")
    service.add_existing(ReleaseRequest("a", "1.0.0", "a.bin"))
    service.add_existing(ReleaseRequest("b", "1.1.0", "b.bin"))
    service.delete("a")
    service.delete("b", delete_file=True)
    assert leftovers(service) == ["a.bin"]


def test_seed_metadata_import_and_export(service: ReleaseService) -> None:
    put(service, "ota-1.0.0.zip", b"one")
    put(service, "ota-1.1.0.zip", b"two")
    added, problems = service.import_metadata(
        {
            "build-1000": {"version": "1.0.0", "filename": "ota-1.0.0.zip"},
            "build-1001": {"version": "1.1.0", "filename": "ota-1.1.0.zip"},
            "build-bad": {"version": "1.2.0", "filename": "missing.zip"},
            "build-worse": "not an object",
        }
    )
    assert [r.build_id for r in added] == ["build-1000", "build-1001"]
    assert len(problems) == 2
    assert export_metadata(service.catalog()) == {
        "build-1001": {"version": "1.1.0", "filename": "ota-1.1.0.zip"},
        "build-1000": {"version": "1.0.0", "filename": "ota-1.0.0.zip"},
    }


def test_database_survives_reopen_and_migrations_are_idempotent(
    tmp_path: Path, signer: ReleaseSigner, db_url: str
) -> None:
    url = db_url
    packages = PackageFolder(tmp_path / "packages")
    (packages.root / "a.bin").write_bytes(b"a")
    ReleaseService(ReleaseStore(open_database(url)), packages, signer).add_existing(
        ReleaseRequest("a", "1.0.0", "a.bin")
    )
    reopened = ReleaseStore(open_database(url))
    assert [r.build_id for r in reopened.load_catalog()] == ["a"]


def test_device_registry_records_announcements_and_statuses(db_url: str) -> None:
    registry = DeviceRegistry(open_database(db_url))
    t1 = datetime(2026, 1, 1, tzinfo=UTC)
    t2 = datetime(2026, 1, 2, tzinfo=UTC)
    ann = Announcement.from_bytes(
        b'{"build_id":"b1","version":"1.0.0","hardware":"hw","channel":"stable"}'
    )
    registry.apply([AnnouncementSeen("d1", ann, "b2", t1)])
    # A later announcement that leaves optional fields out keeps what we knew.
    registry.apply(
        [
            AnnouncementSeen("d1", Announcement.from_bytes(b'{"build_id":"b1"}'), "b2", t1),
            StatusSeen("d1", StatusReport.from_bytes(b'{"state":"installed","build_id":"b2"}'), t2),
        ]
    )
    record = registry.get("d1")
    assert record is not None
    assert (record.build_id, record.version, record.hardware, record.channel) == (
        "b1",
        "1.0.0",
        "hw",
        "stable",
    )
    assert (record.last_state, record.last_state_build, record.last_offered_build) == (
        DeviceState.INSTALLED.value,
        "b2",
        "b2",
    )
    assert record.last_seen == t2
    assert registry.get("unknown") is None
    assert [r.device_id for r in registry.all()] == ["d1"]


def test_plain_postgresql_urls_use_the_shipped_driver(postgres_server: object) -> None:
    from ota_core.settings import Settings

    url = postgres_server.new_database()  # type: ignore[attr-defined]
    plain = url.replace("postgresql+psycopg://", "postgresql://")
    settings = Settings(database_url=plain, _env_file=None)  # type: ignore[call-arg]
    assert settings.resolved_database_url == url
    assert open_database(settings.resolved_database_url).engine.dialect.driver == "psycopg"
