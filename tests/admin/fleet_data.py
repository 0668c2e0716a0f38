"""Putting devices into the registry of a running server, as the bridge would."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from ota_core.models import Announcement, StatusReport
from ota_core.store.devices import AnnouncementSeen, StatusSeen
from tests.http_files.live_server import Running


def when(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def announce(
    server: Running,
    device_id: str,
    at: datetime,
    offered: str | None = None,
    **fields: Any,
) -> None:
    announcement = Announcement.from_bytes(json.dumps(fields).encode())
    server.services.registry.apply([AnnouncementSeen(device_id, announcement, offered, at)])


def report(
    server: Running, device_id: str, at: datetime, state: str, build_id: str, detail: str = ""
) -> None:
    body: dict[str, Any] = {"state": state, "build_id": build_id}
    if detail:
        body["detail"] = detail
    status = StatusReport.from_bytes(json.dumps(body).encode())
    server.services.registry.apply([StatusSeen(device_id, status, at)])


def small_fleet(server: Running) -> None:
    """d1 (hw-a, stable, 1.0.0, installed), d2 (hw-b, beta, 1.0.0, failed),
    d3 (hw-a, no channel, 2.0.0, never reported) — seen on 1, 2 and 3 January."""
    announce(
        server,
        "d1",
        when("2026-01-01T10:00"),
        build_id="b-100",
        version="1.0.0",
        hardware="hw-a",
        channel="stable",
    )
    report(server, "d1", when("2026-01-01T10:05"), "installed", "b-100")
    announce(
        server,
        "d2",
        when("2026-01-02T10:00"),
        build_id="b-100",
        version="1.0.0",
        hardware="hw-b",
        channel="beta",
    )
    report(server, "d2", when("2026-01-02T10:05"), "failed", "b-200", "checksum-mismatch")
    announce(
        server, "d3", when("2026-01-03T10:00"), build_id="b-200", version="2.0.0", hardware="hw-a"
    )
