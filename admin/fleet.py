"""Fleet registry queries for the admin: filtered, paged device lists, one device's story.

Filters are applied in SQL (a fleet can be large; only one page crosses the
wire). The devices table is read with the schema of :mod:`ota_core.store.schema`;
writes stay with :class:`~ota_core.store.devices.DeviceRegistry`.

Times: ``last_seen`` is stored in UTC. SQLite keeps it as naive text, so a
filter bound is converted to UTC (naive input counts as UTC) before it is
compared; other databases compare time zone aware values directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.exc import SQLAlchemyError

from ota_core.catalog import Catalog
from ota_core.errors import InvalidInput, NotFound, ServiceUnavailable
from ota_core.explain import Explanation, explain
from ota_core.identifiers import check_device_id
from ota_core.models import DeviceFacts, DeviceState
from ota_core.store.database import Database
from ota_core.store.devices import DeviceRecord, DeviceRegistry, record_from_row
from ota_core.store.schema import devices
from ota_core.versions import parse_version

DEFAULT_LIMIT = 100  # a page of the device list
API_DEFAULT_LIMIT = 1_000  # the JSON API: scripts that listed every device keep working longer
MAX_LIMIT = 10_000
#: ``status=none``: devices that never sent a status report.
NO_STATUS = "none"
STATUS_CHOICES = (*(s.value for s in DeviceState), NO_STATUS)


def parse_when(value: str | None, name: str) -> datetime | None:
    """An ISO 8601 time (``2026-11-25T12:00``, ``…Z``, ``…+02:00``) in UTC; naive = UTC."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError as e:
        raise InvalidInput(f"{name} must be an ISO 8601 time such as 2026-11-25T12:00Z") from e
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _text(value: str | None) -> str | None:
    value = (value or "").strip()
    return value or None


@dataclass(frozen=True)
class DeviceFilter:
    """What the admin asked for; empty strings (as an HTML form sends them) mean "any"."""

    version: str | None = None
    status: str | None = None
    channel: str | None = None
    hardware: str | None = None
    seen_after: datetime | None = None
    seen_before: datetime | None = None
    limit: int = DEFAULT_LIMIT
    offset: int = 0

    @classmethod
    def parse(
        cls,
        *,
        version: str | None = None,
        status: str | None = None,
        channel: str | None = None,
        hardware: str | None = None,
        seen_after: str | None = None,
        seen_before: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
        default_limit: int = DEFAULT_LIMIT,
    ) -> DeviceFilter:
        status = _text(status)
        if status is not None and status not in STATUS_CHOICES:
            raise InvalidInput(f"status must be one of {', '.join(STATUS_CHOICES)}")
        version = _text(version)
        if version is not None:
            parse_version(version)  # a typo is a 400, not an empty list
        limit = default_limit if limit is None else limit
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}")
        offset = offset or 0
        if offset < 0:
            raise InvalidInput("offset must not be negative")
        return cls(
            version=version,
            status=status,
            channel=_text(channel),
            hardware=_text(hardware),
            seen_after=parse_when(seen_after, "seen_after"),
            seen_before=parse_when(seen_before, "seen_before"),
            limit=limit,
            offset=offset,
        )

    def where(self, query: Select[Any], sqlite: bool) -> Select[Any]:
        c = devices.c
        if self.version is not None:
            query = query.where(c.version == self.version)
        if self.status == NO_STATUS:
            query = query.where(c.last_state.is_(None))
        elif self.status is not None:
            query = query.where(c.last_state == self.status)
        if self.channel is not None:
            query = query.where(c.channel == self.channel)
        if self.hardware is not None:
            query = query.where(c.hardware == self.hardware)
        if self.seen_after is not None:
            query = query.where(c.last_seen >= _bound(self.seen_after, sqlite))
        if self.seen_before is not None:
            query = query.where(c.last_seen < _bound(self.seen_before, sqlite))
        return query

    def query_params(self, **changes: Any) -> dict[str, str]:
        """The filter as URL parameters (for paging links), without the empty ones."""
        values: dict[str, Any] = {
            "version": self.version,
            "status": self.status,
            "channel": self.channel,
            "hardware": self.hardware,
            "seen_after": _iso(self.seen_after),
            "seen_before": _iso(self.seen_before),
            "limit": self.limit if self.limit != DEFAULT_LIMIT else None,
            "offset": self.offset or None,
        }
        values.update(changes)
        return {k: str(v) for k, v in values.items() if v not in (None, "", 0)}


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M")


def _bound(value: datetime, sqlite: bool) -> datetime:
    # SQLite stores the naive UTC wall time; compare like with like.
    return value.replace(tzinfo=None) if sqlite else value


@dataclass(frozen=True)
class DevicePage:
    devices: list[DeviceRecord]
    total: int
    filter: DeviceFilter

    @property
    def has_next(self) -> bool:
        return self.filter.offset + len(self.devices) < self.total


@dataclass
class DeviceQuery:
    """The device filters as query parameters, shared by the API and the page (``Depends()``)."""

    version: str | None = None
    status: str | None = None
    channel: str | None = None
    hardware: str | None = None
    seen_after: str | None = None
    seen_before: str | None = None
    limit: int | None = None
    offset: int | None = None

    def to_filter(self, default_limit: int = DEFAULT_LIMIT) -> DeviceFilter:
        return DeviceFilter.parse(**vars(self), default_limit=default_limit)

    def as_typed(self) -> dict[str, str]:
        """What the admin typed, to refill the filter form."""
        return {
            name: value or ""
            for name, value in vars(self).items()
            if name not in ("limit", "offset")
        }


def find_devices(database: Database, wanted: DeviceFilter) -> DevicePage:
    """One page of devices matching ``wanted``, in device id order, and how many match."""
    sqlite = database.engine.dialect.name == "sqlite"
    page = (
        wanted.where(select(devices), sqlite)
        .order_by(devices.c.device_id)
        .limit(wanted.limit)
        .offset(wanted.offset)
    )
    count = wanted.where(select(func.count()).select_from(devices), sqlite)
    try:
        with database.engine.connect() as conn:
            rows = conn.execute(page).all()
            total = int(conn.execute(count).scalar_one())
    except SQLAlchemyError as e:
        raise ServiceUnavailable(f"database unavailable: {e}") from e
    return DevicePage([record_from_row(r) for r in rows], total, wanted)


def facet_values(database: Database) -> dict[str, list[str]]:
    """Distinct versions, channels and hardware ids, for the filter form's suggestions."""
    out: dict[str, list[str]] = {}
    try:
        with database.engine.connect() as conn:
            for name in ("version", "channel", "hardware"):
                column = devices.c[name]
                rows = conn.execute(
                    select(column).where(column.is_not(None)).distinct().order_by(column).limit(200)
                ).all()
                out[name] = [r[0] for r in rows]
    except SQLAlchemyError as e:
        raise ServiceUnavailable(f"database unavailable: {e}") from e
    return out


def device_record(registry: DeviceRegistry, device_id: str) -> DeviceRecord:
    record = registry.get(check_device_id(device_id))
    if record is None:
        raise NotFound(f"no device {device_id!r} has been seen")
    return record


def facts_of(record: DeviceRecord) -> DeviceFacts | None:
    """What the policy needs, from the last announcement; None before the first one."""
    if record.build_id is None:
        return None
    return DeviceFacts(
        record.device_id, record.build_id, record.version, record.hardware, record.channel
    )


def explain_device(catalog: Catalog, record: DeviceRecord) -> Explanation | None:
    facts = facts_of(record)
    return None if facts is None else explain(catalog, facts)
