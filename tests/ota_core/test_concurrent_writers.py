"""Two bridges and the admin side writing at once lose nothing, on SQLite and PostgreSQL."""

from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime
from pathlib import Path

from ota_core.keyfiles import ensure_release_keys, load_signer
from ota_core.models import Announcement, StatusReport
from ota_core.package_files import PackageFolder
from ota_core.releases import ReleaseRequest, ReleaseService
from ota_core.store import DeviceRegistry, ReleaseStore, open_database
from ota_core.store.devices import AnnouncementSeen, StatusSeen

DEVICES_PER_WRITER = 150
RELEASES = 15


def _bridge_like_writer(url: str, prefix: str) -> None:
    registry = DeviceRegistry(open_database(url, run_migrations=False))
    now = datetime.now(UTC)
    for start in range(0, DEVICES_PER_WRITER, 25):  # batches, as the write-behind does
        batch: list[AnnouncementSeen | StatusSeen] = []
        for n in range(start, start + 25):
            device = f"{prefix}-{n}"
            batch.append(
                AnnouncementSeen(device, Announcement(build_id="b0", version="0.1"), "b1", now)
            )
            for state in ("downloading", "verifying", "installing", "installed"):
                report = StatusReport.from_bytes(f'{{"state":"{state}","build_id":"b1"}}'.encode())
                batch.append(StatusSeen(device, report, now))
        registry.apply(batch)


def _admin_like_writer(url: str, root: str) -> None:
    service = ReleaseService(
        ReleaseStore(open_database(url, run_migrations=False)),
        PackageFolder(Path(root) / "packages"),
        load_signer(Path(root) / "keys"),
    )
    for n in range(RELEASES):
        service.add_upload(
            ReleaseRequest(f"rel-{n}", f"2.{n}.0", f"rel-{n}.bin"), [f"pkg {n}".encode()], 1024
        )


def test_concurrent_writers_lose_nothing(tmp_path: Path, db_url: str) -> None:
    ensure_release_keys(tmp_path / "keys")
    database = open_database(db_url)  # migrate once, before the writers start
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_bridge_like_writer, args=(db_url, "bridge-a")),
        context.Process(target=_bridge_like_writer, args=(db_url, "bridge-b")),
        context.Process(target=_admin_like_writer, args=(db_url, str(tmp_path))),
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0, f"{worker} failed"

    registry = DeviceRegistry(database)
    records = registry.all()
    assert len(records) == 2 * DEVICES_PER_WRITER
    assert {r.last_state for r in records} == {"installed"}
    assert all(len(registry.history(r.device_id)) == 6 for r in records[:20])
    catalog = ReleaseStore(database).load_catalog()
    assert sorted(r.build_id for r in catalog) == sorted(f"rel-{n}" for n in range(RELEASES))
    assert catalog.revision >= RELEASES
