"""The device registry: last announcement and last status of each device.

Writes come in batches (:meth:`DeviceRegistry.apply`) so the bridge can write
behind its hot path: one transaction per batch, upserts keyed by device id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from ota_core.errors import ServiceUnavailable
from ota_core.models import Announcement, StatusReport
from ota_core.store.database import Database
from ota_core.store.schema import devices


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
        if isinstance(event, AnnouncementSeen):
            ann = event.announcement
            values: dict[str, Any] = {
                "build_id": ann.build_id,
                "last_seen": event.at,
                "last_offered_build": event.offered_build,
            }
            # Keep what we knew when the device leaves optional fields out.
            for name in ("version", "hardware", "channel"):
                value = getattr(ann, name)
                if value is not None or not exists:
                    values[name] = value
        else:
            report = event.report
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

    def get(self, device_id: str) -> DeviceRecord | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(devices).where(devices.c.device_id == device_id)).first()
        return None if row is None else _record(row)

    def all(self) -> list[DeviceRecord]:
        with self._engine.connect() as conn:
            rows = conn.execute(select(devices).order_by(devices.c.device_id)).all()
        return [_record(r) for r in rows]
