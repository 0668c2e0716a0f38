"""The device registry: last announcement and last status of each device.

Writes come in batches (:meth:`DeviceRegistry.apply`) so the bridge can write
behind its hot path. A batch costs a fixed handful of statements, whatever its
size: one transaction, one SELECT each for the device rows and the install rows
the batch touches, then the batch's effects played through in memory (in
arrival order, so history and the install state machine come out exactly as if
each event had been written on its own), and written with one ``executemany``
per kind of change. Writing event by event cost ~520 µs per event on SQLite;
batched it is a few tens of µs.

Concurrent writers (the HTTP side's check-update, several bridges) must not
interleave between the preloading SELECTs and the writes: on SQLite the
transaction takes the write lock up front (``BEGIN IMMEDIATE``); elsewhere the
preloaded rows are locked with ``SELECT … FOR UPDATE``, and a row another
writer inserted meanwhile makes the batch fail with an integrity error, which
callers retry (the write-behind writer does; :meth:`claim_offers` does itself).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, bindparam, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from ota_core.errors import ServiceUnavailable
from ota_core.models import Announcement, DeviceFacts, StatusReport
from ota_core.rollouts import next_install_state
from ota_core.store.database import Database
from ota_core.store.rollouts import rollout_ids_for
from ota_core.store.schema import device_events, device_installs, devices

#: Most ids in one ``IN (…)`` list (SQLite allows 32,766 bound variables).
_IN_CHUNK = 500
_DEVICE_COLUMNS = tuple(c.name for c in devices.columns if c.name != "device_id")


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


@dataclass(frozen=True, slots=True)
class OfferPushed:
    """The bridge pushed an offer for ``build_id`` to a known device, unasked."""

    device_id: str
    build_id: str
    at: datetime


RegistryEvent = AnnouncementSeen | StatusSeen | OfferPushed


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


def record_from_row(row: Any) -> DeviceRecord:
    """A ``devices`` row as a DeviceRecord, with timezone-aware times (SQLite drops the zone)."""
    data = dict(row._mapping)
    data["last_seen"] = _aware(data["last_seen"])
    data["last_status_at"] = _aware(data["last_status_at"])
    return DeviceRecord(**data)


def _chunks(items: Sequence[str], size: int = _IN_CHUNK) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass
class _Device:
    """A device row as the batch sees it: existing (``values`` holds only what the batch
    changed) or created by the batch (``values`` holds every column)."""

    values: dict[str, Any]
    is_new: bool
    changed: set[str] = field(default_factory=set)

    def set(self, name: str, value: Any) -> None:
        self.values[name] = value
        self.changed.add(name)


@dataclass
class _Install:
    """A (device, build) install row: its state at load time, and what the batch made of it."""

    state: str
    is_new: bool
    loaded_state: str | None = None  # for existing rows: the state the UPDATE expects
    row: dict[str, Any] = field(default_factory=dict)  # new rows: every column
    changes: dict[str, Any] = field(default_factory=dict)  # existing rows: SET values


class _Batch:
    """Plays a batch of events through in memory, then writes the outcome in a few statements.

    The logic per event is the one the registry always had (the docstrings of
    the ``_announce``/``_status``/``_pushed`` steps say what each does); only
    the I/O is grouped.
    """

    def __init__(self, conn: Connection, events: Sequence[RegistryEvent]) -> None:
        self._conn = conn
        self._events = events
        self._devices: dict[str, _Device] = {}
        self._installs: dict[tuple[str, str], _Install] = {}
        self._history: list[dict[str, Any]] = []
        self._rollouts: dict[str, tuple[int, int]] = {}
        self.claimed: list[OfferPushed] = []

    # -- loading ----------------------------------------------------------

    def _load(self) -> None:
        conn = self._conn
        ids = sorted({e.device_id for e in self._events})  # sorted: row locks in one order
        builds: set[str] = set()
        offered: set[str] = set()
        for event in self._events:
            if isinstance(event, AnnouncementSeen):
                builds.add(event.announcement.build_id)
                if event.offered_build is not None:
                    builds.add(event.offered_build)
                    offered.add(event.offered_build)
            elif isinstance(event, StatusSeen):
                builds.add(event.report.build_id)
                offered.add(event.report.build_id)
            else:
                builds.add(event.build_id)
                offered.add(event.build_id)
        for chunk in _chunks(ids):
            # Only which devices exist: updates write just the columns the batch changes.
            for (device_id,) in conn.execute(
                select(devices.c.device_id).where(devices.c.device_id.in_(chunk)).with_for_update()
            ):
                self._devices[device_id] = _Device({}, is_new=False)
            if builds:
                for device_id, build_id, state in conn.execute(
                    select(
                        device_installs.c.device_id,
                        device_installs.c.build_id,
                        device_installs.c.state,
                    )
                    .where(
                        and_(
                            device_installs.c.device_id.in_(chunk),
                            device_installs.c.build_id.in_(sorted(builds)),
                        )
                    )
                    .with_for_update()
                ):
                    self._installs[(device_id, build_id)] = _Install(
                        state, is_new=False, loaded_state=state
                    )
        # Only builds a new install row may be created for need their rollout.
        self._rollouts = rollout_ids_for(conn, offered)

    # -- playing the events through ---------------------------------------

    def run(self) -> list[OfferPushed]:
        self._load()
        for event in self._events:
            if isinstance(event, AnnouncementSeen):
                self._announce(event)
            elif isinstance(event, StatusSeen):
                self._status(event)
            else:
                self._pushed(event)
        self._write()
        return self.claimed

    def _history_row(
        self,
        device_id: str,
        at: float,
        kind: str,
        build_id: str | None,
        state: str | None = None,
        detail: str | None = None,
    ) -> None:
        self._history.append(
            {
                "device_id": device_id,
                "at": at,
                "kind": kind,
                "build_id": build_id,
                "state": state,
                "detail": detail,
            }
        )

    def _device_row(self, device_id: str) -> _Device:
        """The device's row, created (all columns NULL) if the batch makes it."""
        device = self._devices.get(device_id)
        if device is None:
            device = _Device(dict.fromkeys(_DEVICE_COLUMNS), is_new=True)
            self._devices[device_id] = device
        return device

    def _new_install(
        self, device_id: str, build_id: str, state: str, at: float, detail: str | None
    ) -> None:
        rollout = self._rollouts.get(build_id)
        self._installs[(device_id, build_id)] = _Install(
            state,
            is_new=True,
            row={
                "device_id": device_id,
                "build_id": build_id,
                "state": state,
                "rollout_id": rollout[0] if rollout else None,
                "stage_index": rollout[1] if rollout else None,
                "offered_at": at,
                "updated_at": at,
                "detail": detail,
            },
        )

    def _change_install(self, install: _Install, **values: Any) -> None:
        install.state = values["state"]
        if install.is_new:
            install.row.update(values)
        else:
            install.changes.update(values)

    def _record_offer(self, device_id: str, build_id: str, at: float) -> bool:
        """An "offered" install row and history line, unless (device, build) has one already."""
        if (device_id, build_id) in self._installs:
            return False  # offered again (re-announce, duplicate): the attempt keeps its state
        self._new_install(device_id, build_id, "offered", at, None)
        self._history_row(device_id, at, "offer", build_id)
        return True

    def _announce(self, event: AnnouncementSeen) -> None:
        """Last announcement on the device row; running the offered build means installed."""
        device_id, ann = event.device_id, event.announcement
        at = event.at.timestamp()
        known = device_id in self._devices
        self._history_row(device_id, at, "announce", ann.build_id)
        install = self._installs.get((device_id, ann.build_id))
        if install is not None and install.state != "installed":
            # Running the build it was offered: that install is done, whatever was reported.
            self._change_install(
                install, state="installed", updated_at=at, detail="announced running this build"
            )
        if event.offered_build is not None and event.offered_build != ann.build_id:
            self._record_offer(device_id, event.offered_build, at)
        device = self._device_row(device_id)
        device.set("build_id", ann.build_id)
        device.set("last_seen", event.at)
        if event.offered_build is not None or not known:
            device.set("last_offered_build", event.offered_build)
        # Keep what we knew when the device leaves optional fields out.
        for name in ("version", "hardware", "channel"):
            value = getattr(ann, name)
            if value is not None or not known:
                device.set(name, value)

    def _status(self, event: StatusSeen) -> None:
        """Move (device, build) along the install state machine; stale reports only touch
        last_seen (history keeps every report)."""
        device_id, report = event.device_id, event.report
        at = event.at.timestamp()
        self._history_row(
            device_id, at, "status", report.build_id, report.state.value, report.detail
        )
        install = self._installs.get((device_id, report.build_id))
        if install is None:
            # Progress on a build we never recorded offering (offered before the
            # registry existed, or fetched by hand): start tracking it now.
            self._new_install(device_id, report.build_id, report.state.value, at, report.detail)
        else:
            new_state = next_install_state(install.state, report.state)
            if new_state is None:
                # A late or duplicate report: history keeps it, current state does not move.
                known = self._devices.get(device_id)
                if known is not None:
                    known.set("last_seen", event.at)
                return
            self._change_install(install, state=new_state, updated_at=at, detail=report.detail)
        device = self._device_row(device_id)
        device.set("last_seen", event.at)
        device.set("last_state", report.state.value)
        device.set("last_state_build", report.build_id)
        device.set("last_detail", report.detail)
        device.set("last_status_at", event.at)

    def _pushed(self, event: OfferPushed) -> None:
        """A pushed offer is recorded like an answered one; the device was not seen."""
        if self._record_offer(event.device_id, event.build_id, event.at.timestamp()):
            self.claimed.append(event)
            known = self._devices.get(event.device_id)
            if known is not None:
                known.set("last_offered_build", event.build_id)

    # -- writing ------------------------------------------------------------

    def _write(self) -> None:
        conn = self._conn
        if self._history:
            conn.execute(insert(device_events), self._history)
        # Rows in key order: two writers inserting the same keys then wait for each
        # other in one order, never in a cycle (PostgreSQL would abort one as a deadlock).
        new_installs = [
            install.row for _, install in sorted(self._installs.items()) if install.is_new
        ]
        if new_installs:
            conn.execute(insert(device_installs), new_installs)
        self._update_installs()
        new_devices = [
            {"device_id": device_id, **d.values}
            for device_id, d in sorted(self._devices.items())
            if d.is_new
        ]
        if new_devices:
            conn.execute(insert(devices), new_devices)
        self._update_devices()

    def _update_installs(self) -> None:
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for (device_id, build_id), install in sorted(self._installs.items()):
            if install.is_new or not install.changes:
                continue
            params = {f"set_{k}": v for k, v in install.changes.items()}
            params.update(k_device=device_id, k_build=build_id, k_state=install.loaded_state)
            groups.setdefault(tuple(sorted(install.changes)), []).append(params)
        for names, rows in groups.items():
            statement = (
                update(device_installs)
                .where(
                    and_(
                        device_installs.c.device_id == bindparam("k_device"),
                        device_installs.c.build_id == bindparam("k_build"),
                        # The state this batch started from: a row another writer moved
                        # meanwhile is not overwritten (see the module docstring).
                        device_installs.c.state == bindparam("k_state"),
                    )
                )
                .values({name: bindparam(f"set_{name}") for name in names})
            )
            result = self._conn.execute(statement, rows)
            if self._conn.dialect.supports_sane_multi_rowcount and result.rowcount != len(rows):
                raise _Stale(f"{len(rows) - result.rowcount} install rows changed during the batch")

    def _update_devices(self) -> None:
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for device_id, device in sorted(self._devices.items()):
            if device.is_new or not device.changed:
                continue
            names = tuple(sorted(device.changed))
            params = {f"set_{name}": device.values[name] for name in names}
            params["k_device"] = device_id
            groups.setdefault(names, []).append(params)
        for names, rows in groups.items():
            statement = (
                update(devices)
                .where(devices.c.device_id == bindparam("k_device"))
                .values({name: bindparam(f"set_{name}") for name in names})
            )
            self._conn.execute(statement, rows)


class _Stale(SQLAlchemyError):
    """Rows changed between the batch's read and its write: write the batch again."""


#: SQLSTATEs of a transaction that lost to a concurrent one: deadlock, serialization.
_RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})


def _lost_a_race(error: BaseException | None) -> bool:
    """A concurrent writer got there first: the same batch, read again, will go through."""
    if isinstance(error, (IntegrityError, _Stale)):
        return True
    sqlstate = getattr(getattr(error, "orig", None), "sqlstate", None)
    return sqlstate in _RETRYABLE_SQLSTATES


class DeviceRegistry:
    def __init__(self, database: Database) -> None:
        self._engine = database.engine
        self._sqlite = database.engine.dialect.name == "sqlite"

    def apply(self, events: Sequence[RegistryEvent]) -> None:
        """Write a batch of events in one transaction, with the effect of writing them in order.

        Raises :class:`ServiceUnavailable` when the database fails; nothing of
        the batch is written then, and it can be applied again as a whole.
        """
        if events:
            self._write_retrying(events)

    def claim_offers(self, pushes: Sequence[OfferPushed]) -> list[OfferPushed]:
        """Record pushed offers, each only if (device, build) has no install row yet.

        Returns the pushes this call recorded: the caller publishes exactly
        those. With several bridges pushing the same release, the insert of the
        "offered" row is the claim — exactly one bridge succeeds per (device,
        build), so a device is not pushed the same offer twice.
        """
        if not pushes:
            return []
        return self._write_retrying(pushes)

    def _write_retrying(self, events: Sequence[RegistryEvent]) -> list[OfferPushed]:
        attempts = 5
        for attempt in range(1, attempts + 1):
            try:
                return self._write(events)
            except ServiceUnavailable as e:
                # Another writer inserted one of our rows first (possible on
                # databases without a whole-database write lock): read again.
                if attempt == attempts or not _lost_a_race(e.__cause__):
                    raise
        raise AssertionError("unreachable")

    def _write(self, events: Sequence[RegistryEvent]) -> list[OfferPushed]:
        try:
            with self._engine.begin() as conn:
                if self._sqlite:
                    # Take the write lock before reading what the writes depend on. The
                    # pysqlite driver would only BEGIN (deferred) at the first write.
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                return _Batch(conn, events).run()
        except SQLAlchemyError as e:
            raise ServiceUnavailable(f"database unavailable: {e}") from e

    # -- reads ----------------------------------------------------------------

    def known_devices(self, after: str | None = None, limit: int = 1000) -> list[DeviceFacts]:
        """Devices that announced a build, in device id order, ``limit`` after ``after``.

        What the push needs to decide each device's offer; page with the last id.
        """
        query = (
            select(
                devices.c.device_id,
                devices.c.build_id,
                devices.c.version,
                devices.c.hardware,
                devices.c.channel,
            )
            .where(devices.c.build_id.is_not(None))
            .order_by(devices.c.device_id)
            .limit(limit)
        )
        if after is not None:
            query = query.where(devices.c.device_id > after)
        try:
            with self._engine.connect() as conn:
                rows = conn.execute(query).all()
        except SQLAlchemyError as e:
            raise ServiceUnavailable(f"database unavailable: {e}") from e
        return [DeviceFacts(d, b, v, h, c) for d, b, v, h, c in rows]

    def existing_installs(
        self, device_ids: Sequence[str], build_ids: Iterable[str]
    ) -> set[tuple[str, str]]:
        """Which of these (device, build) pairs have an install row (offered or further)."""
        builds = sorted(set(build_ids))
        found: set[tuple[str, str]] = set()
        if not builds:
            return found
        try:
            with self._engine.connect() as conn:
                for chunk in _chunks(sorted(set(device_ids))):
                    rows = conn.execute(
                        select(device_installs.c.device_id, device_installs.c.build_id).where(
                            and_(
                                device_installs.c.device_id.in_(chunk),
                                device_installs.c.build_id.in_(builds),
                            )
                        )
                    )
                    found.update((d, b) for d, b in rows)
        except SQLAlchemyError as e:
            raise ServiceUnavailable(f"database unavailable: {e}") from e
        return found

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
        return None if row is None else record_from_row(row)

    def all(self) -> list[DeviceRecord]:
        with self._engine.connect() as conn:
            rows = conn.execute(select(devices).order_by(devices.c.device_id)).all()
        return [record_from_row(r) for r in rows]
