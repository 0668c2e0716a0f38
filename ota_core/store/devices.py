"""The device registry: last announcement and last status of each device.

Writes come in batches (:meth:`DeviceRegistry.apply`) so the bridge can write
behind its hot path: one transaction per batch, upserts keyed by device id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from ota_core.errors import ServiceUnavailable
from ota_core.models import Announcement, StatusReport
from ota_core.rollouts import next_install_state
from ota_core.store.database import Database
from ota_core.store.rollouts import rollout_ids_for
from ota_core.store.schema import device_events, device_installs, devices


@dataclass(frozen=True, slots=True)
class AnnouncementSeen:
    device_id: str
    announcement: Announcement
    offered_build: str | None
    at: datetime


@dataclass(frozen=True, slots=True)
class StatusSeen:
    device_id: str
    report: StatusReport
    at: datetime


RegistryEvent = AnnouncementSeen | StatusSeen


@dataclass(frozen=True)
class DeviceRecord:
    device_id: str
    hardware: str | None
    channel: str | None
    build_id: str | None
    version: str | None
    last_seen: datetime
    last_offered_build: str | None
    last_state: str | None
    last_state_build: str | None
    last_detail: str | None
    last_status_at: datetime | None


def _event(
    conn: Connection,
    device_id: str,
    at: float,
    kind: str,
    build_id: str | None,
    state: str | None,
    detail: str | None,
) -> None:
    conn.execute(
        insert(device_events).values(
            device_id=device_id, at=at, kind=kind, build_id=build_id, state=state, detail=detail
        )
    )


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _record(row: Any) -> DeviceRecord:
    data = dict(row._mapping)
    data["last_seen"] = _aware(data["last_seen"])
    data["last_status_at"] = _aware(data["last_status_at"])
    return DeviceRecord(**data)


class DeviceRegistry:
    def __init__(self, database: Database) -> None:
        self._engine = database.engine

    def apply(self, events: Sequence[RegistryEvent]) -> None:
        """Write a batch of events in one transaction, in order."""
        if not events:
            return
        try:
            with self._engine.begin() as conn:
                for event in events:
                    self._apply_one(conn, event)
        except SQLAlchemyError as e:
            raise ServiceUnavailable(f"database unavailable: {e}") from e

    def _apply_one(self, conn: Connection, event: RegistryEvent) -> None:
        table = devices
        exists = conn.execute(
            select(table.c.device_id).where(table.c.device_id == event.device_id)
        ).first()
        at = event.at.timestamp()
        if isinstance(event, AnnouncementSeen):
            ann = event.announcement
            values: dict[str, Any] = {
                "build_id": ann.build_id,
                "last_seen": event.at,
            }
            if event.offered_build is not None or not exists:
                values["last_offered_build"] = event.offered_build
            # Keep what we knew when the device leaves optional fields out.
            for name in ("version", "hardware", "channel"):
                value = getattr(ann, name)
                if value is not None or not exists:
                    values[name] = value
            _event(conn, event.device_id, at, "announce", ann.build_id, None, None)
            # Running the build it was offered: that install is done, whatever was reported.
            conn.execute(
                update(device_installs)
                .where(
                    and_(
                        device_installs.c.device_id == event.device_id,
                        device_installs.c.build_id == ann.build_id,
                        device_installs.c.state != "installed",
                    )
                )
                .values(state="installed", updated_at=at, detail="announced running this build")
            )
            if event.offered_build is not None and event.offered_build != ann.build_id:
                self._record_offer(conn, event.device_id, event.offered_build, at)
        else:
            report = event.report
            _event(
                conn,
                event.device_id,
                at,
                "status",
                report.build_id,
                report.state.value,
                report.detail,
            )
            if not self._advance_install(conn, event.device_id, report, at):
                # A late or duplicate report: history keeps it, current state does not move.
                if exists:
                    conn.execute(
                        table.update()
                        .where(table.c.device_id == event.device_id)
                        .values(last_seen=event.at)
                    )
                return
            values = {
                "last_seen": event.at,
                "last_state": report.state.value,
                "last_state_build": report.build_id,
                "last_detail": report.detail,
                "last_status_at": event.at,
            }
        if exists:
            conn.execute(
                table.update().where(table.c.device_id == event.device_id).values(**values)
            )
        else:
            conn.execute(table.insert().values(device_id=event.device_id, **values))

    def _record_offer(self, conn: Connection, device_id: str, build_id: str, at: float) -> None:
        current = conn.execute(
            select(device_installs.c.state).where(
                and_(
                    device_installs.c.device_id == device_id, device_installs.c.build_id == build_id
                )
            )
        ).first()
        if current is not None:
            return  # offered again (re-announce, duplicate): the attempt keeps its state
        rollout = rollout_ids_for(conn, [build_id]).get(build_id)
        conn.execute(
            insert(device_installs).values(
                device_id=device_id,
                build_id=build_id,
                state="offered",
                rollout_id=rollout[0] if rollout else None,
                stage_index=rollout[1] if rollout else None,
                offered_at=at,
                updated_at=at,
            )
        )
        _event(conn, device_id, at, "offer", build_id, None, None)

    def _advance_install(
        self, conn: Connection, device_id: str, report: StatusReport, at: float
    ) -> bool:
        """Move (device, build) along the install state machine; False if the report is stale."""
        row = conn.execute(
            select(device_installs.c.state).where(
                and_(
                    device_installs.c.device_id == device_id,
                    device_installs.c.build_id == report.build_id,
                )
            )
        ).first()
        if row is None:
            # Progress on a build we never recorded offering (offered before the
            # registry existed, or fetched by hand): start tracking it now.
            rollout = rollout_ids_for(conn, [report.build_id]).get(report.build_id)
            conn.execute(
                insert(device_installs).values(
                    device_id=device_id,
                    build_id=report.build_id,
                    state=report.state.value,
                    rollout_id=rollout[0] if rollout else None,
                    stage_index=rollout[1] if rollout else None,
                    offered_at=at,
                    updated_at=at,
                    detail=report.detail,
                )
            )
            return True
        new_state = next_install_state(row[0], report.state)
        if new_state is None:
            return False
        conn.execute(
            update(device_installs)
            .where(
                and_(
                    device_installs.c.device_id == device_id,
                    device_installs.c.build_id == report.build_id,
                )
            )
            .values(state=new_state, updated_at=at, detail=report.detail)
        )
        return True

    def installs(self, device_id: str) -> list[dict[str, Any]]:
        """Every build offered to the device, with its install state."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(device_installs)
                .where(device_installs.c.device_id == device_id)
                .order_by(device_installs.c.offered_at)
            ).all()
        return [dict(r._mapping) for r in rows]

    def history(self, device_id: str, limit: int = 200) -> list[dict[str, Any]]:
        """The device's newest events first: announcements, offers, status reports."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(device_events)
                .where(device_events.c.device_id == device_id)
                .order_by(device_events.c.id.desc())
                .limit(limit)
            ).all()
        return [dict(r._mapping) for r in rows]

    def get(self, device_id: str) -> DeviceRecord | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(devices).where(devices.c.device_id == device_id)).first()
        return None if row is None else _record(row)

    def all(self) -> list[DeviceRecord]:
        with self._engine.connect() as conn:
            rows = conn.execute(select(devices).order_by(devices.c.device_id)).all()
        return [_record(r) for r in rows]
