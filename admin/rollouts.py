"""Rollouts as the admin sees them: one view for the JSON API and the page, and the actions.

The numbers come from :class:`~ota_core.store.rollouts.RolloutStore`; the rules
(what a state allows, when failures pause) stay in :mod:`ota_core.rollouts`.
The automatic pause and advance run in the bridge's rollout supervisor; the
admin side only reads and performs an operator's explicit action.

An action names the stage the operator was looking at (the page sends it with
every button): if the rollout moved meanwhile — the supervisor advanced or
paused it — the action is refused with 409 rather than, say, skipping a stage
with a second "advance".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends
from pydantic import BaseModel

from admin.schemas import RolloutCreate
from http_files.deps import ServicesDep
from ota_core.catalog import Catalog
from ota_core.errors import Conflict, InvalidInput
from ota_core.models import Release
from ota_core.rollouts import Rollout, RolloutState, StageCounts
from ota_core.store.rollouts import INSTALL_STATES, RolloutStore

ACTIONS = ("advance", "pause", "resume", "abort")
#: The progress series is cut to about this many points (enough for a small chart).
MAX_PROGRESS_POINTS = 400
MAX_LOG_ENTRIES = 500


def get_rollout_store(services: ServicesDep) -> RolloutStore:
    # Cheap: the store keeps only the engine. Services has no RolloutStore (yet).
    return RolloutStore(services.database)


RolloutStoreDep = Annotated[RolloutStore, Depends(get_rollout_store)]


def timestamp(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def allowed_actions(rollout: Rollout) -> tuple[str, ...]:
    """The buttons that make sense in this state (the others would be a 409)."""
    if rollout.state is RolloutState.ACTIVE:
        return ("advance", "pause", "abort")
    if rollout.state is RolloutState.PAUSED:
        return ("resume", "abort")
    return ()


def perform(
    store: RolloutStore,
    rollout_id: int,
    action: str,
    *,
    reason: str | None = None,
    expected_stage: int | None = None,
    clock: Callable[[], float] = time.time,
) -> Rollout:
    """Apply an operator's action atomically; illegal transitions are a 409 (Conflict)."""
    if action not in ACTIONS:
        raise InvalidInput(f"action must be one of {', '.join(ACTIONS)}")
    now = clock()
    before = store.get(rollout_id)
    if expected_stage is not None and before.stage_index != expected_stage:
        raise Conflict(
            f"rollout {rollout_id} moved to {before.percent:g}% ({before.state.value}) "
            "meanwhile; look at it again"
        )
    note: str
    change: Callable[[Rollout], Rollout]
    if action == "advance":
        if before.is_last_stage:
            note = f"completed by admin at {before.percent:g}%"
        else:
            note = f"advanced by admin to {before.stages[before.stage_index + 1]:g}%"

        def change(r: Rollout) -> Rollout:
            if r.stage_index != before.stage_index:
                raise Conflict(f"rollout {rollout_id} moved meanwhile; look at it again")
            return r.advance(now)
    elif action == "pause":
        note = f"paused by admin: {reason}" if reason else "paused by admin"

        def change(r: Rollout) -> Rollout:
            return r.pause(note)
    elif action == "resume":
        note = "resumed by admin"

        def change(r: Rollout) -> Rollout:
            return r.resume(now)
    else:
        note = f"aborted by admin: {reason}" if reason else "aborted by admin"

        def change(r: Rollout) -> Rollout:
            return r.abort(note)

    return store.transition(rollout_id, change, note)


# --- the view -------------------------------------------------------------------


class CurrentStageOut(BaseModel):
    """The current stage: offers in it, and finishes since it (re)started (what pauses)."""

    percent: float
    stage_index: int
    offered: int
    downloading: int
    verifying: int
    installing: int
    installed: int
    failed: int
    finished: int
    failure_rate_percent: float
    failure_threshold_percent: float
    failure_min_count: int
    threshold_exceeded: bool


class StageOut(BaseModel):
    stage_index: int
    percent: float
    reached: bool
    current: bool
    total: int
    states: dict[str, int]


class ProgressPointOut(BaseModel):
    at: datetime
    installed: int
    failed: int


class LogEntryOut(BaseModel):
    at: datetime
    state: str
    percent: float
    note: str | None


class RolloutSummaryOut(BaseModel):
    rollout_id: int
    build_id: str
    version: str | None
    state: str
    reason: str | None
    stages: list[float]
    stage_index: int
    percent: float
    channel: str | None
    hardware: str | None
    device_ids: list[str] | None
    failure_threshold_percent: float
    failure_min_count: int
    auto_advance_seconds: int | None
    stage_started_at: datetime
    next_auto_advance_at: datetime | None
    actions: list[str]

    @classmethod
    def of(cls, rollout: Rollout, release: Release | None) -> RolloutSummaryOut:
        auto = rollout.auto_advance_seconds
        next_at = (
            timestamp(rollout.stage_started_at + auto)
            if auto is not None and rollout.state is RolloutState.ACTIVE
            else None
        )
        return cls(
            rollout_id=rollout.rollout_id,
            build_id=rollout.build_id,
            version=release.version if release is not None else None,
            state=rollout.state.value,
            reason=rollout.reason,
            stages=list(rollout.stages),
            stage_index=rollout.stage_index,
            percent=rollout.percent,
            channel=rollout.channel,
            hardware=rollout.hardware,
            device_ids=sorted(rollout.device_ids) if rollout.device_ids is not None else None,
            failure_threshold_percent=rollout.failure_threshold_percent,
            failure_min_count=rollout.failure_min_count,
            auto_advance_seconds=auto,
            stage_started_at=datetime.fromtimestamp(rollout.stage_started_at, UTC),
            next_auto_advance_at=next_at,
            actions=list(allowed_actions(rollout)),
        )


class RolloutOut(RolloutSummaryOut):
    current_stage: CurrentStageOut
    stage_counts: list[StageOut]
    progress: list[ProgressPointOut]
    log: list[LogEntryOut]


def threshold_exceeded(rollout: Rollout, counts: StageCounts) -> bool:
    """The same test as :func:`ota_core.rollouts.evaluate` uses to pause."""
    return (
        counts.failed >= rollout.failure_min_count
        and counts.failure_rate_percent > rollout.failure_threshold_percent
    )


def thin(series: list[tuple[float, int, int]], limit: int) -> list[tuple[float, int, int]]:
    """At most ``limit`` points, evenly spread, always keeping the first and last."""
    if len(series) <= limit:
        return series
    step = (len(series) - 1) / (limit - 1)
    return [series[round(i * step)] for i in range(limit)]


@dataclass(frozen=True)
class RolloutView:
    rollout: Rollout
    release: Release | None  # None once the release was deleted
    current: StageCounts
    stages: list[dict[str, int]]
    progress: list[tuple[float, int, int]]
    log: list[dict[str, Any]]

    @classmethod
    def load(cls, store: RolloutStore, catalog: Catalog, rollout_id: int) -> RolloutView:
        rollout = store.get(rollout_id)
        return cls(
            rollout=rollout,
            release=catalog.by_build.get(rollout.build_id),
            current=store.stage_counts(rollout),
            stages=store.counts_by_stage(rollout),
            progress=thin(store.progress(rollout_id), MAX_PROGRESS_POINTS),
            log=store.log(rollout_id)[-MAX_LOG_ENTRIES:],
        )

    @property
    def exceeded(self) -> bool:
        return threshold_exceeded(self.rollout, self.current)

    def to_out(self) -> RolloutOut:
        r, c = self.rollout, self.current
        summary = RolloutSummaryOut.of(r, self.release)
        return RolloutOut(
            **summary.model_dump(),
            current_stage=CurrentStageOut(
                percent=r.percent,
                stage_index=r.stage_index,
                offered=c.offered,
                downloading=c.downloading,
                verifying=c.verifying,
                installing=c.installing,
                installed=c.installed,
                failed=c.failed,
                finished=c.finished,
                failure_rate_percent=round(c.failure_rate_percent, 2),
                failure_threshold_percent=r.failure_threshold_percent,
                failure_min_count=r.failure_min_count,
                threshold_exceeded=self.exceeded,
            ),
            stage_counts=[
                StageOut(
                    stage_index=i,
                    percent=percent,
                    reached=i <= r.stage_index,
                    current=i == r.stage_index,
                    total=sum(self.stages[i].values()),
                    states={s: self.stages[i].get(s, 0) for s in INSTALL_STATES},
                )
                for i, percent in enumerate(r.stages)
            ],
            progress=[
                ProgressPointOut(at=datetime.fromtimestamp(t, UTC), installed=i, failed=f)
                for t, i, f in self.progress
            ],
            log=[
                LogEntryOut(
                    at=datetime.fromtimestamp(e["at"], UTC),
                    state=e["state"],
                    percent=e["percent"],
                    note=e["note"],
                )
                for e in self.log
            ],
        )


# --- HTML forms -------------------------------------------------------------------

#: Form fields of a rollout (the start form, and the optional part of the upload form).
ROLLOUT_FORM_FIELDS = (
    "stages",
    "rollout_channel",
    "rollout_hardware",
    "device_ids",
    "failure_threshold_percent",
    "failure_min_count",
    "auto_advance_seconds",
)


def _split(text: str) -> list[str]:
    return [part for part in text.replace(",", " ").split() if part]


def _number(text: str, name: str) -> float:
    try:
        return float(text.strip().rstrip("%"))
    except ValueError as e:
        raise InvalidInput(f"{name}: {text[:20]!r} is not a number") from e


def rollout_from_form(build_id: str, form: dict[str, str]) -> RolloutCreate | None:
    """A rollout from form text (``stages`` like ``10, 50, 100`` or ``10% 50% 100%``).

    None when no stages were given: the release is then for every eligible device
    at once, as in the seed.
    """
    stages = _split(form.get("stages", ""))
    if not stages:
        return None
    data: dict[str, Any] = {
        "build_id": build_id,
        "stages": [_number(s, "stages") for s in stages],
    }
    for field, key in (("channel", "rollout_channel"), ("hardware", "rollout_hardware")):
        if form.get(key, "").strip():
            data[field] = form[key].strip()
    if form.get("device_ids", "").strip():
        data["device_ids"] = _split(form["device_ids"])
    if form.get("failure_threshold_percent", "").strip():
        data["failure_threshold_percent"] = _number(
            form["failure_threshold_percent"], "failure_threshold_percent"
        )
    for key in ("failure_min_count", "auto_advance_seconds"):
        text = form.get(key, "").strip()
        if text:
            try:
                data[key] = int(text)
            except ValueError as e:
                raise InvalidInput(f"{key}: {text[:20]!r} is not a whole number") from e
    return RolloutCreate.parse(data)
