"""Rollouts and the install state machine in a real SQLite database."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from ota_core.errors import Conflict, InvalidInput, NotFound
from ota_core.models import Announcement, StatusReport
from ota_core.package_files import PackageFolder
from ota_core.policy import DeviceFacts, decide
from ota_core.releases import ReleaseRequest, ReleaseService
from ota_core.rollouts import RolloutState, evaluate, in_cohort
from ota_core.signing import ReleaseSigner
from ota_core.store import DeviceRegistry, ReleaseStore, open_database
from ota_core.store.devices import AnnouncementSeen, StatusSeen
from ota_core.store.rollouts import RolloutSpec, RolloutStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def world(
    tmp_path: Path, signer: ReleaseSigner, db_url: str
) -> tuple[ReleaseService, RolloutStore, DeviceRegistry, Clock]:
    db = open_database(db_url)
    service = ReleaseService(ReleaseStore(db), PackageFolder(tmp_path / "packages"), signer)
    (tmp_path / "packages" / "one.bin").write_bytes(b"1")
    (tmp_path / "packages" / "two.bin").write_bytes(b"2")
    service.add_existing(ReleaseRequest("b1", "1.0.0", "one.bin"))
    service.add_existing(ReleaseRequest("b2", "2.0.0", "two.bin"))
    clock = Clock()
    return service, RolloutStore(db, clock), DeviceRegistry(db), clock


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def announce(
    registry: DeviceRegistry, device_id: str, build: str, offered: str | None, t: float
) -> None:
    ann = Announcement.from_bytes(f'{{"build_id":"{build}"}}'.encode())
    registry.apply([AnnouncementSeen(device_id, ann, offered, at(t))])


def report(registry: DeviceRegistry, device_id: str, state: str, build: str, t: float) -> None:
    status = StatusReport.from_bytes(f'{{"state":"{state}","build_id":"{build}"}}'.encode())
    registry.apply([StatusSeen(device_id, status, at(t))])


def test_catalog_carries_rollouts_and_policy_obeys_them(world: tuple) -> None:  # type: ignore[type-arg]
    service, rollouts, _, _ = world
    rollout = rollouts.create(RolloutSpec("b2", (10.0, 100.0)))
    catalog = service.catalog()
    offered = [
        d
        for d in range(1000)
        if (r := decide(catalog, DeviceFacts(f"d{d}", "b1")).release) is not None
        and r.build_id == "b2"
    ]
    expected = [d for d in range(1000) if in_cohort("b2", f"d{d}", 10)]
    assert offered == expected
    rollouts.transition(rollout.rollout_id, lambda r: r.advance(2_000))
    catalog = service.catalog()
    assert all(decide(catalog, DeviceFacts(f"d{d}", "b1")).release is not None for d in range(1000))


def test_one_rollout_in_progress_per_release(world: tuple) -> None:  # type: ignore[type-arg]
    _, rollouts, _, _ = world
    first = rollouts.create(RolloutSpec("b2", (50.0,)))
    with pytest.raises(Conflict):
        rollouts.create(RolloutSpec("b2", (100.0,)))
    rollouts.transition(first.rollout_id, lambda r: r.abort())
    assert rollouts.create(RolloutSpec("b2", (100.0,))).rollout_id != first.rollout_id
    with pytest.raises(NotFound):
        rollouts.create(RolloutSpec("nope", (100.0,)))


def test_revision_moves_on_rollout_changes(world: tuple) -> None:  # type: ignore[type-arg]
    service, rollouts, _, _ = world
    before = service.store.revision()
    rollout = rollouts.create(RolloutSpec("b2", (10.0, 100.0)))
    rollouts.transition(rollout.rollout_id, lambda r: r.pause("by hand"))
    assert service.store.revision() == before + 2
    assert [e["state"] for e in rollouts.log(rollout.rollout_id)] == ["active", "paused"]


def test_status_reports_follow_the_state_machine(world: tuple) -> None:  # type: ignore[type-arg]
    _, rollouts, registry, _ = world
    rollout = rollouts.create(RolloutSpec("b2", (100.0,)))
    announce(registry, "dev", "b1", "b2", 1)
    report(registry, "dev", "downloading", "b2", 2)
    report(registry, "dev", "installing", "b2", 3)
    report(registry, "dev", "downloading", "b2", 4)  # late: ignored
    report(registry, "dev", "installed", "b2", 5)
    report(registry, "dev", "installed", "b2", 6)  # duplicate
    report(registry, "dev", "verifying", "b2", 7)  # late: never overwrites installed
    installs = registry.installs("dev")
    assert [(i["build_id"], i["state"], i["rollout_id"]) for i in installs] == [
        ("b2", "installed", rollout.rollout_id)
    ]
    record = registry.get("dev")
    assert record is not None and record.last_state == "installed"
    kinds = [e["kind"] for e in reversed(registry.history("dev"))]
    assert kinds == ["announce", "offer"] + ["status"] * 6


def test_announcing_the_offered_build_counts_as_installed(world: tuple) -> None:  # type: ignore[type-arg]
    _, _, registry, _ = world
    announce(registry, "dev", "b1", "b2", 1)
    report(registry, "dev", "downloading", "b2", 2)
    announce(registry, "dev", "b2", None, 3)  # rebooted into the new build; reports lost
    assert [i["state"] for i in registry.installs("dev")] == ["installed"]


def test_failures_in_the_stage_pause_the_rollout(world: tuple) -> None:  # type: ignore[type-arg]
    _, rollouts, registry, clock = world
    rollout = rollouts.create(
        RolloutSpec("b2", (100.0,), failure_threshold_percent=25, failure_min_count=2)
    )
    for n in range(6):
        announce(registry, f"d{n}", "b1", "b2", 1_001)
    for n in range(3):
        report(registry, f"d{n}", "installed", "b2", 1_002)
    report(registry, "d3", "failed", "b2", 1_003)
    counts = rollouts.stage_counts(rollout)
    assert (counts.offered, counts.installed, counts.failed) == (6, 3, 1)
    assert not evaluate(rollout, counts, clock.now).changed  # one failure: under the minimum
    report(registry, "d4", "failed", "b2", 1_004)
    counts = rollouts.stage_counts(rollout)
    result = evaluate(rollout, counts, clock.now)
    assert result.rollout.state is RolloutState.PAUSED
    paused = rollouts.transition(rollout.rollout_id, lambda r: result.rollout, result.note)
    assert "40.0%" in (paused.reason or "")
    # Resuming restarts the count: the failures before it do not pause it again.
    clock.now = 2_000
    resumed = rollouts.transition(rollout.rollout_id, lambda r: r.resume(clock.now))
    assert not evaluate(resumed, rollouts.stage_counts(resumed), clock.now).changed
    assert rollouts.counts_by_stage(resumed)[0]["failed"] == 2
    assert [p[1:] for p in rollouts.progress(rollout.rollout_id)][-1] == (3, 2)


def test_concurrent_transition_loses_cleanly(world: tuple) -> None:  # type: ignore[type-arg]
    _, rollouts, _, _ = world
    rollout = rollouts.create(RolloutSpec("b2", (10.0, 100.0)))

    def sneaky(r):  # type: ignore[no-untyped-def]
        # Another admin acts between our read and our write.
        rollouts.transition(rollout.rollout_id, lambda x: x.pause("other admin"))
        return r.advance(5_000)

    with pytest.raises(Exception):  # noqa: B017 - SQLite serialises: either Conflict or lock
        rollouts.transition(rollout.rollout_id, sneaky)
    assert rollouts.get(rollout.rollout_id).state is RolloutState.PAUSED


def test_release_published_with_its_rollout_is_never_unstaged(world: tuple) -> None:  # type: ignore[type-arg]
    service = world[0]
    revision = service.store.revision()
    service.add_upload(
        ReleaseRequest("b3", "3.0.0", "three.bin"),
        [b"3"],
        100,
        rollout=RolloutSpec("b3", (10.0, 100.0)),
    )
    # One transaction, one revision step: no reader can see b3 without its rollout.
    assert service.store.revision() == revision + 1
    catalog = service.catalog()
    assert catalog.rollouts.by_build["b3"].percent == 10.0
    offered = {
        d
        for d in range(500)
        if decide(catalog, DeviceFacts(f"d{d}", "b2")).release is not None
    }
    assert offered == {d for d in range(500) if in_cohort("b3", f"d{d}", 10)}
    # A rollout that cannot start (bad stages) publishes nothing at all.
    with pytest.raises(InvalidInput):
        service.add_upload(
            ReleaseRequest("b4", "4.0.0", "four.bin"),
            [b"4"],
            100,
            rollout=RolloutSpec("b4", (50.0, 10.0)),
        )
    assert "b4" not in service.catalog().by_build
    assert not (service.packages.root / "four.bin").exists()
