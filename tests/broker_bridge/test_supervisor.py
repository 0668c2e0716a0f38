"""The rollout supervisor on a real SQLite database, with a hand-driven clock."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from broker_bridge.supervisor import RolloutSupervisor
from ota_core.models import Announcement, DeviceState, StatusReport
from ota_core.package_files import PackageFolder
from ota_core.releases import ReleaseRequest, ReleaseService
from ota_core.rollouts import RolloutState
from ota_core.signing import ReleaseSigner, generate_release_key
from ota_core.store import Database, DeviceRegistry, ReleaseStore, open_database
from ota_core.store.devices import AnnouncementSeen, StatusSeen
from ota_core.store.rollouts import RolloutSpec, RolloutStore


class Clock:
    def __init__(self) -> None:
        self.now = 10_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def signer() -> ReleaseSigner:
    return ReleaseSigner(generate_release_key())


@pytest.fixture
def database(tmp_path: Path, signer: ReleaseSigner) -> Iterator[Database]:
    db = open_database(f"sqlite:///{tmp_path / 'ota.sqlite3'}")
    service = ReleaseService(ReleaseStore(db), PackageFolder(tmp_path / "packages"), signer)
    (tmp_path / "packages" / "two.bin").write_bytes(b"2")
    service.add_existing(ReleaseRequest("b2", "2.0.0", "two.bin"))
    yield db
    db.dispose()


def offer_and_report(registry: DeviceRegistry, states: list[str], at: float) -> None:
    when = datetime.fromtimestamp(at, UTC)
    ann = Announcement(build_id="b1", version="1.0.0")
    registry.apply([AnnouncementSeen(f"d{n}", ann, "b2", when) for n in range(len(states))])
    registry.apply([
        StatusSeen(f"d{n}", StatusReport(state=DeviceState(s), build_id="b2"), when)
        for n, s in enumerate(states)
    ])


def test_failures_pause_and_several_supervisors_pause_once(database: Database) -> None:
    clock = Clock()
    store = RolloutStore(database, clock)
    rollout = store.create(RolloutSpec(
        "b2", (100.0,), failure_threshold_percent=30.0, failure_min_count=2
    ))
    one, two = (RolloutSupervisor(RolloutStore(database, clock), 1.0, clock) for _ in range(2))
    offer_and_report(DeviceRegistry(database), ["installed", "installed", "failed"], clock.now)
    assert one.check_once() == [] and two.check_once() == []  # 1 failure: under the minimum

    offer_and_report(DeviceRegistry(database), ["installed"] * 3 + ["failed"] * 3, clock.now + 1)
    changed = one.check_once() + two.check_once()
    assert [r.state for r in changed] == [RolloutState.PAUSED]
    paused = store.get(rollout.rollout_id)
    assert paused.reason is not None and "66.7% (4 of 6 finished)" in paused.reason
    assert [e["state"] for e in store.log(rollout.rollout_id)] == ["active", "paused"]


def test_a_stale_evaluation_does_not_undo_an_admins_change(database: Database) -> None:
    clock = Clock()
    store = RolloutStore(database, clock)
    rollout = store.create(RolloutSpec("b2", (10.0, 100.0), auto_advance_seconds=60))

    class AdminActsMeanwhile(RolloutStore):
        """Between the supervisor's read and its write, an admin pauses the rollout."""

        def stage_counts(self, r):  # type: ignore[no-untyped-def]
            store.transition(r.rollout_id, lambda x: x.pause("admin"), "admin")
            return super().stage_counts(r)

    clock.now += 61
    supervisor = RolloutSupervisor(AdminActsMeanwhile(database, clock), 1.0, clock)
    assert supervisor.check_once() == []
    after = store.get(rollout.rollout_id)
    assert (after.state, after.stage_index, after.reason) == (RolloutState.PAUSED, 0, "admin")


def test_auto_advance_after_the_wait_then_completion(database: Database) -> None:
    clock = Clock()
    store = RolloutStore(database, clock)
    rollout = store.create(RolloutSpec("b2", (10.0, 100.0), auto_advance_seconds=60))
    supervisor = RolloutSupervisor(store, 1.0, clock)
    clock.now += 59
    assert supervisor.check_once() == []
    clock.now += 1
    assert [r.percent for r in supervisor.check_once()] == [100.0]
    clock.now += 60
    assert [r.state for r in supervisor.check_once()] == [RolloutState.COMPLETED]
    assert store.get(rollout.rollout_id).state is RolloutState.COMPLETED
    assert supervisor.check_once() == []  # completed rollouts are left alone
