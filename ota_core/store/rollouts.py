"""Rollouts in the database. Every change bumps the catalog revision, so bridges reload."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import and_, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from ota_core.errors import Conflict, NotFound, ServiceUnavailable
from ota_core.rollouts import Rollout, RolloutBook, RolloutState, StageCounts, validate_stages
from ota_core.store.database import Database
from ota_core.store.revision import bump_revision
from ota_core.store.schema import device_installs, releases, rollout_log, rollouts

FINISHED = ("installed", "failed")
IN_PROGRESS = (RolloutState.ACTIVE.value, RolloutState.PAUSED.value)
INSTALL_STATES = ("offered", "downloading", "verifying", "installing", "installed", "failed")


def _to_rollout(row: Any) -> Rollout:
    m = row._mapping
    device_ids = json.loads(m["device_ids"]) if m["device_ids"] is not None else None
    return Rollout(
        rollout_id=m["rollout_id"],
        build_id=m["build_id"],
        stages=tuple(float(p) for p in json.loads(m["stages"])),
        stage_index=m["stage_index"],
        state=RolloutState(m["state"]),
        channel=m["channel"],
        hardware=m["hardware"],
        device_ids=frozenset(device_ids) if device_ids is not None else None,
        failure_threshold_percent=m["failure_threshold_percent"],
        failure_min_count=m["failure_min_count"],
        auto_advance_seconds=m["auto_advance_seconds"],
        stage_started_at=m["stage_started_at"],
        reason=m["reason"],
    )


def load_book(conn: Connection) -> RolloutBook:
    """The newest rollout of each release: the one that governs its offers."""
    rows = conn.execute(select(rollouts).order_by(rollouts.c.rollout_id)).all()
    return RolloutBook({r._mapping["build_id"]: _to_rollout(r) for r in rows})


@dataclass(frozen=True)
class RolloutSpec:
    build_id: str
    stages: tuple[float, ...]
    channel: str | None = None
    hardware: str | None = None
    device_ids: tuple[str, ...] | None = None
    failure_threshold_percent: float = 10.0
    failure_min_count: int = 5
    auto_advance_seconds: int | None = None


class RolloutStore:
    def __init__(self, database: Database, clock: Callable[[], float] = time.time) -> None:
        self._engine = database.engine
        self._clock = clock

    def create(self, spec: RolloutSpec) -> Rollout:
        with _translate_errors(), self._engine.begin() as conn:
            created = insert_rollout(conn, spec, self._clock())
            bump_revision(conn)
        return created

    def get(self, rollout_id: int) -> Rollout:
        with _translate_errors(), self._engine.connect() as conn:
            row = conn.execute(select(rollouts).where(rollouts.c.rollout_id == rollout_id)).first()
        if row is None:
            raise NotFound(f"no rollout {rollout_id}")
        return _to_rollout(row)

    def all(self) -> list[Rollout]:
        with _translate_errors(), self._engine.connect() as conn:
            rows = conn.execute(select(rollouts).order_by(rollouts.c.rollout_id.desc())).all()
        return [_to_rollout(r) for r in rows]

    def live(self) -> list[Rollout]:
        return [r for r in self.all() if r.state is RolloutState.ACTIVE]

    def transition(
        self, rollout_id: int, change: Callable[[Rollout], Rollout], note: str | None = None
    ) -> Rollout:
        """Apply ``change`` atomically; a concurrent change to the same rollout wins (409)."""
        now = self._clock()
        with _translate_errors(), self._engine.begin() as conn:
            row = conn.execute(select(rollouts).where(rollouts.c.rollout_id == rollout_id)).first()
            if row is None:
                raise NotFound(f"no rollout {rollout_id}")
            before = _to_rollout(row)
            after = change(before)
            result = conn.execute(
                update(rollouts)
                .where(
                    and_(
                        rollouts.c.rollout_id == rollout_id,
                        rollouts.c.updated_at == row._mapping["updated_at"],
                    )
                )
                .values(
                    state=after.state.value,
                    stage_index=after.stage_index,
                    stage_started_at=after.stage_started_at,
                    reason=after.reason,
                    updated_at=max(now, row._mapping["updated_at"] + 1e-6),
                )
            )
            if result.rowcount != 1:
                raise Conflict(f"rollout {rollout_id} changed meanwhile; try again")
            _log(conn, after, now, note or after.reason)
            bump_revision(conn)
        return after

    def stage_counts(self, rollout: Rollout) -> StageCounts:
        """Current stage: every device offered in it, and finishes since the stage (re)started."""
        with _translate_errors(), self._engine.connect() as conn:
            rows = conn.execute(
                select(device_installs.c.state, func.count())
                .where(
                    and_(
                        device_installs.c.rollout_id == rollout.rollout_id,
                        device_installs.c.stage_index == rollout.stage_index,
                    )
                )
                .where(
                    ~device_installs.c.state.in_(FINISHED)
                    | (device_installs.c.updated_at >= rollout.stage_started_at)
                )
                .group_by(device_installs.c.state)
            ).all()
        counts = {state: n for state, n in rows}
        return StageCounts.from_states({**counts, "offered": sum(counts.values())})

    def counts_by_stage(self, rollout: Rollout) -> list[dict[str, int]]:
        """For the rollout page: per stage, how many devices are in each state."""
        with _translate_errors(), self._engine.connect() as conn:
            rows = conn.execute(
                select(device_installs.c.stage_index, device_installs.c.state, func.count())
                .where(device_installs.c.rollout_id == rollout.rollout_id)
                .group_by(device_installs.c.stage_index, device_installs.c.state)
            ).all()
        stages: list[dict[str, int]] = [
            {
                "offered": 0,
                "downloading": 0,
                "verifying": 0,
                "installing": 0,
                "installed": 0,
                "failed": 0,
            }
            for _ in rollout.stages
        ]
        for stage_index, state, n in rows:
            if stage_index is not None and 0 <= stage_index < len(stages):
                stages[stage_index][state] = stages[stage_index].get(state, 0) + n
        return stages

    def progress(self, rollout_id: int) -> list[tuple[float, int, int]]:
        """(time, installed so far, failed so far) at each finish: the progress chart."""
        with _translate_errors(), self._engine.connect() as conn:
            rows = conn.execute(
                select(device_installs.c.updated_at, device_installs.c.state)
                .where(
                    and_(
                        device_installs.c.rollout_id == rollout_id,
                        device_installs.c.state.in_(FINISHED),
                    )
                )
                .order_by(device_installs.c.updated_at)
            ).all()
        installed = failed = 0
        series = []
        for at, state in rows:
            if state == "installed":
                installed += 1
            else:
                failed += 1
            series.append((float(at), installed, failed))
        return series

    def log(self, rollout_id: int) -> list[dict[str, Any]]:
        with _translate_errors(), self._engine.connect() as conn:
            rows = conn.execute(
                select(rollout_log)
                .where(rollout_log.c.rollout_id == rollout_id)
                .order_by(rollout_log.c.id)
            ).all()
        return [dict(r._mapping) for r in rows]


def insert_rollout(conn: Connection, spec: RolloutSpec, now: float) -> Rollout:
    """Start a rollout inside the caller's transaction (which must bump the revision).

    Used on its own, and together with a new release so that a staged release is
    never visible to all devices for a moment between two transactions.
    """
    validate_stages(spec.stages)
    draft = Rollout(  # validates the rest before anything is written
        0,
        spec.build_id,
        spec.stages,
        channel=spec.channel,
        hardware=spec.hardware,
        device_ids=frozenset(spec.device_ids) if spec.device_ids is not None else None,
        failure_threshold_percent=spec.failure_threshold_percent,
        failure_min_count=spec.failure_min_count,
        auto_advance_seconds=spec.auto_advance_seconds,
        stage_started_at=now,
    )
    known = select(releases.c.build_id).where(releases.c.build_id == spec.build_id)
    if conn.execute(known).first() is None:
        raise NotFound(f"no release with build_id {spec.build_id!r}")
    live = conn.execute(
        select(rollouts.c.rollout_id).where(
            and_(rollouts.c.build_id == spec.build_id, rollouts.c.state.in_(IN_PROGRESS))
        )
    ).first()
    if live is not None:
        raise Conflict(
            f"release {spec.build_id!r} already has rollout {live[0]} in progress; abort it first"
        )
    inserted = conn.execute(
        insert(rollouts).values(
            build_id=spec.build_id,
            stages=json.dumps(list(spec.stages)),
            stage_index=0,
            state=RolloutState.ACTIVE.value,
            channel=spec.channel,
            hardware=spec.hardware,
            device_ids=None if spec.device_ids is None else json.dumps(sorted(spec.device_ids)),
            failure_threshold_percent=spec.failure_threshold_percent,
            failure_min_count=spec.failure_min_count,
            auto_advance_seconds=spec.auto_advance_seconds,
            stage_started_at=now,
            reason=None,
            created_at=now,
            updated_at=now,
        )
    )
    created = replace(draft, rollout_id=int(inserted.inserted_primary_key[0]))  # type: ignore[index]
    _log(conn, created, now, "started")
    return created


def _log(conn: Connection, rollout: Rollout, at: float, note: str | None) -> None:
    conn.execute(
        insert(rollout_log).values(
            rollout_id=rollout.rollout_id,
            at=at,
            state=rollout.state.value,
            percent=rollout.percent,
            note=note,
        )
    )


class _translate_errors:
    """Turn database failures into ServiceUnavailable at this edge."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if isinstance(exc, SQLAlchemyError):
            raise ServiceUnavailable(f"database unavailable: {exc}") from exc


def rollout_ids_for(conn: Connection, build_ids: Iterable[str]) -> dict[str, tuple[int, int]]:
    """Newest rollout id and its stage index for each build id that has one."""
    wanted = set(build_ids)
    if not wanted:
        return {}
    rows = conn.execute(
        select(rollouts.c.build_id, rollouts.c.rollout_id, rollouts.c.stage_index)
        .where(rollouts.c.build_id.in_(wanted))
        .order_by(rollouts.c.rollout_id)
    ).all()
    return {b: (rid, idx) for b, rid, idx in rows}
