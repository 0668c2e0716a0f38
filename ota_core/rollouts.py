"""Staged rollouts and the per-device install state machine (pure, no I/O).

A rollout targets one release at a channel and/or hardware and/or an explicit
device list, in stages by percentage (say 1 → 10 → 50 → 100). A device's cohort
position is a hash of the release's build id and its device id, so the same
devices stay in as a rollout widens and a device's position never changes
between stages. Releases without a rollout reach every eligible device at once,
as in the seed.

Rollout states::

    active ──pause / failure threshold──► paused ──resume──► active
      │                                     │
      └──────── abort ──► aborted ◄──────────┘
      └── last stage reached and wait elapsed ──► completed

Only ``active`` and ``completed`` rollouts hand out new offers; ``paused`` and
``aborted`` stop new offers but never disturb devices that are mid-install.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from itertools import pairwise

from ota_core.errors import Conflict, InvalidInput
from ota_core.models import DeviceFacts, DeviceState, Release

BUCKETS = 10_000  # cohort resolution: 0.01 %


class RolloutState(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"
    ABORTED = "aborted"
    COMPLETED = "completed"


def cohort_bucket(build_id: str, device_id: str) -> int:
    """Stable position of a device in a release's rollout, 0 … 9999."""
    digest = hashlib.sha256(f"{build_id}\x00{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def in_cohort(build_id: str, device_id: str, percent: float) -> bool:
    return cohort_bucket(build_id, device_id) < round(percent * BUCKETS / 100)


@dataclass(frozen=True)
class Rollout:
    rollout_id: int
    build_id: str
    stages: tuple[float, ...]
    stage_index: int = 0
    state: RolloutState = RolloutState.ACTIVE
    channel: str | None = None
    hardware: str | None = None
    device_ids: frozenset[str] | None = None
    failure_threshold_percent: float = 10.0
    failure_min_count: int = 5
    auto_advance_seconds: int | None = None  # None: advance by hand
    stage_started_at: float = 0.0
    reason: str | None = None

    def __post_init__(self) -> None:
        validate_stages(self.stages)
        if not 0 <= self.stage_index < len(self.stages):
            raise InvalidInput("stage index out of range")
        if not 0 <= self.failure_threshold_percent <= 100:
            raise InvalidInput("failure threshold must be a percentage")
        if self.failure_min_count < 1:
            raise InvalidInput("failure minimum count must be at least 1")

    @property
    def percent(self) -> float:
        return self.stages[self.stage_index]

    @property
    def is_last_stage(self) -> bool:
        return self.stage_index == len(self.stages) - 1

    @property
    def offers_allowed(self) -> bool:
        return self.state in (RolloutState.ACTIVE, RolloutState.COMPLETED)

    def targets(self, device: DeviceFacts) -> bool:
        """Is the device in the rollout's audience at all (whatever the stage)?"""
        if self.device_ids is not None and device.device_id not in self.device_ids:
            return False
        if self.channel is not None and device.channel != self.channel:
            return False
        return self.hardware is None or device.hardware == self.hardware

    def reaches(self, device: DeviceFacts) -> bool:
        """Is the device in a cohort the rollout has reached, and may it get offers now?"""
        return (
            self.offers_allowed
            and self.targets(device)
            and in_cohort(self.build_id, device.device_id, self.percent)
        )

    # --- transitions: each returns a new Rollout or raises Conflict -------------

    def advance(self, now: float) -> Rollout:
        if self.state is not RolloutState.ACTIVE:
            raise Conflict(f"rollout is {self.state.value}; only an active rollout advances")
        if self.is_last_stage:
            return replace(self, state=RolloutState.COMPLETED, reason="last stage reached")
        return replace(self, stage_index=self.stage_index + 1, stage_started_at=now, reason=None)

    def pause(self, reason: str) -> Rollout:
        if self.state not in (RolloutState.ACTIVE,):
            raise Conflict(f"rollout is {self.state.value}; only an active rollout pauses")
        return replace(self, state=RolloutState.PAUSED, reason=reason)

    def resume(self, now: float) -> Rollout:
        if self.state is not RolloutState.PAUSED:
            raise Conflict(f"rollout is {self.state.value}; only a paused rollout resumes")
        # The failure count restarts with the resumed stage: the operator looked at it.
        return replace(self, state=RolloutState.ACTIVE, stage_started_at=now, reason=None)

    def abort(self, reason: str = "aborted by admin") -> Rollout:
        if self.state in (RolloutState.ABORTED, RolloutState.COMPLETED):
            raise Conflict(f"rollout is already {self.state.value}")
        return replace(self, state=RolloutState.ABORTED, reason=reason)


def validate_stages(stages: Iterable[float]) -> tuple[float, ...]:
    values = tuple(stages)
    if not values:
        raise InvalidInput("a rollout needs at least one stage")
    if any(not 0 < p <= 100 for p in values):
        raise InvalidInput("stage percentages must be above 0 and at most 100")
    if any(b <= a for a, b in pairwise(values)):
        raise InvalidInput("stage percentages must increase")
    return values


@dataclass(frozen=True)
class StageCounts:
    """Devices of the current stage by install state (finished = installed + failed)."""

    offered: int = 0
    downloading: int = 0
    verifying: int = 0
    installing: int = 0
    installed: int = 0
    failed: int = 0

    @property
    def finished(self) -> int:
        return self.installed + self.failed

    @property
    def failure_rate_percent(self) -> float:
        return 100.0 * self.failed / self.finished if self.finished else 0.0

    @classmethod
    def from_states(cls, states: Mapping[str, int]) -> StageCounts:
        return cls(**{k: int(v) for k, v in states.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Evaluation:
    rollout: Rollout
    changed: bool
    note: str | None = None


def evaluate(rollout: Rollout, counts: StageCounts, now: float) -> Evaluation:
    """Pause on too many failures; advance automatically when the wait is over."""
    if rollout.state is not RolloutState.ACTIVE:
        return Evaluation(rollout, False)
    if (
        counts.failed >= rollout.failure_min_count
        and counts.failure_rate_percent > rollout.failure_threshold_percent
    ):
        reason = (
            f"failure rate {counts.failure_rate_percent:.1f}% "
            f"({counts.failed} of {counts.finished} finished) exceeds "
            f"{rollout.failure_threshold_percent:g}% at stage {rollout.percent:g}%"
        )
        return Evaluation(rollout.pause(reason), True, reason)
    if (
        rollout.auto_advance_seconds is not None
        and now - rollout.stage_started_at >= rollout.auto_advance_seconds
    ):
        advanced = rollout.advance(now)
        return Evaluation(advanced, True, f"advanced to {advanced.percent:g}%")
    return Evaluation(rollout, False)


@dataclass(frozen=True)
class RolloutBook:
    """The rollouts that govern offers, keyed by release build id (newest per release)."""

    by_build: Mapping[str, Rollout] = field(default_factory=dict)

    def allows(self, release: Release, device: DeviceFacts) -> bool:
        """The policy hook: may ``device`` be offered ``release`` now?"""
        rollout = self.by_build.get(release.build_id)
        return rollout is None or rollout.reaches(device)


# --- the install state machine per (device, offered build) -------------------------

_RANK = {
    "offered": 1,
    DeviceState.DOWNLOADING.value: 2,
    DeviceState.VERIFYING.value: 3,
    DeviceState.INSTALLING.value: 4,
    DeviceState.INSTALLED.value: 5,
    DeviceState.FAILED.value: 5,
}
FINISHED_RANK = 5


def next_install_state(current: str | None, reported: DeviceState) -> str | None:
    """The new state of (device, build) after a report, or None to ignore the report.

    States only move forward (offered → downloading → verifying → installing →
    installed | failed); a duplicate or late report never moves one back, and a
    finished attempt stays finished.
    """
    now_rank = _RANK.get(current or "", 0)
    if now_rank >= FINISHED_RANK or _RANK[reported.value] <= now_rank:
        return None
    return reported.value
