from __future__ import annotations

import pytest

from ota_core.errors import Conflict, InvalidInput
from ota_core.models import DeviceState
from ota_core.policy import DeviceFacts
from ota_core.rollouts import (
    Rollout,
    RolloutBook,
    RolloutState,
    StageCounts,
    cohort_bucket,
    evaluate,
    in_cohort,
    next_install_state,
)
from ota_core.signing import ReleaseSigner

from .conftest import make_release


def device(n: int, **kw: str) -> DeviceFacts:
    return DeviceFacts(device_id=f"dev-{n:05d}", build_id="b1", version="1.0.0", **kw)


def test_cohorts_are_stable_nested_and_about_the_right_size() -> None:
    ids = [f"dev-{n:05d}" for n in range(20_000)]
    ten = {d for d in ids if in_cohort("b2", d, 10)}
    fifty = {d for d in ids if in_cohort("b2", d, 50)}
    assert ten <= fifty  # widening never drops a device
    assert 1_800 < len(ten) < 2_200 and 9_600 < len(fifty) < 10_400
    assert all(in_cohort("b2", d, 100) for d in ids)
    assert cohort_bucket("b2", "dev-00001") == cohort_bucket("b2", "dev-00001")
    # Another release picks other early devices, so the same ones are not always first.
    assert {d for d in ids if in_cohort("b3", d, 10)} != ten


def test_stage_validation() -> None:
    for bad in [(), (0,), (10, 5), (10, 10), (50, 101)]:
        with pytest.raises(InvalidInput):
            Rollout(1, "b2", bad)


def test_rollout_reaches_only_its_audience_and_cohort() -> None:
    rollout = Rollout(1, "b2", (10, 100), channel="beta", hardware="hw")
    beta = [device(n, channel="beta", hardware="hw") for n in range(2_000)]
    reached = [d for d in beta if rollout.reaches(d)]
    assert 120 < len(reached) < 280
    assert not rollout.reaches(device(1, channel="stable", hardware="hw"))
    assert not rollout.reaches(device(1, channel="beta", hardware="other"))
    listed = Rollout(2, "b2", (100,), device_ids=frozenset({"dev-00001"}))
    assert listed.reaches(device(1)) and not listed.reaches(device(2))


def test_transitions() -> None:
    rollout = Rollout(1, "b2", (1, 10, 100))
    rollout = rollout.advance(now=10)
    assert rollout.percent == 10 and rollout.stage_started_at == 10
    paused = rollout.pause("looks odd")
    assert not paused.offers_allowed and not paused.reaches(device(1))
    with pytest.raises(Conflict):
        paused.advance(now=11)
    resumed = paused.resume(now=12)
    assert resumed.state is RolloutState.ACTIVE and resumed.reason is None
    done = resumed.advance(now=13).advance(now=14)
    assert done.state is RolloutState.COMPLETED and done.offers_allowed
    aborted = Rollout(1, "b2", (10,)).abort()
    assert aborted.state is RolloutState.ABORTED and not aborted.offers_allowed
    with pytest.raises(Conflict):
        aborted.resume(now=1)


def test_failure_threshold_pauses_with_a_reason() -> None:
    rollout = Rollout(1, "b2", (10, 100), failure_threshold_percent=20, failure_min_count=3)
    # Few failures: below the minimum count, no verdict yet.
    assert not evaluate(rollout, StageCounts(installed=0, failed=2), now=0).changed
    # Enough failures over the threshold: paused, and the reason says why.
    result = evaluate(rollout, StageCounts(installed=5, failed=3), now=0)
    assert result.changed and result.rollout.state is RolloutState.PAUSED
    assert "37.5%" in (result.rollout.reason or "") and "20%" in (result.rollout.reason or "")
    # At or under the threshold: keeps going.
    assert not evaluate(rollout, StageCounts(installed=12, failed=3), now=0).changed


def test_automatic_advance_after_the_wait() -> None:
    rollout = Rollout(1, "b2", (10, 50, 100), auto_advance_seconds=60, stage_started_at=100)
    assert not evaluate(rollout, StageCounts(installed=3), now=159).changed
    result = evaluate(rollout, StageCounts(installed=3), now=160)
    assert result.rollout.percent == 50 and result.rollout.stage_started_at == 160


def test_book_governs_only_releases_with_rollouts(signer: ReleaseSigner) -> None:
    governed = make_release(signer, "b2", "2.0.0", 2)
    free = make_release(signer, "b3", "3.0.0", 3)
    book = RolloutBook({"b2": Rollout(1, "b2", (100,)).abort()})
    assert not book.allows(governed, device(1))
    assert book.allows(free, device(1))


@pytest.mark.parametrize(
    ("current", "reported", "expected"),
    [
        (None, DeviceState.DOWNLOADING, "downloading"),
        ("offered", DeviceState.INSTALLING, "installing"),  # skipped steps are fine
        ("installing", DeviceState.DOWNLOADING, None),  # late report ignored
        ("installed", DeviceState.DOWNLOADING, None),  # never overwrites installed
        ("installed", DeviceState.FAILED, None),
        ("failed", DeviceState.INSTALLED, None),
        ("verifying", DeviceState.VERIFYING, None),  # duplicate
        ("verifying", DeviceState.FAILED, "failed"),
    ],
)
def test_install_state_machine(
    current: str | None, reported: DeviceState, expected: str | None
) -> None:
    assert next_install_state(current, reported) == expected
