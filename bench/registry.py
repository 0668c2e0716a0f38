"""DeviceRegistry.apply cost per event on SQLite: a realistic mix, batches of 500.

usage (repo root): .venv/bin/python /tmp/bench/registry_bench.py [--devices 5000] [--events 20000]
Mix per device: announce (offered b2) -> downloading -> verifying -> installing -> installed ->
announce b2; cycled over devices so batches mix new and known devices.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from ota_core.models import Announcement, StatusReport
from ota_core.store import DeviceRegistry, open_database
from ota_core.store.devices import AnnouncementSeen, StatusSeen

ap = argparse.ArgumentParser()
ap.add_argument("--devices", type=int, default=5000)
ap.add_argument("--events", type=int, default=30000)
ap.add_argument("--batch", type=int, default=500)
ap.add_argument("--kind", default="mix", choices=["mix", "announce"])
a = ap.parse_args()
db = open_database(f"sqlite:///{Path(tempfile.mkdtemp()) / 'ota.sqlite3'}")
reg = DeviceRegistry(db)
ann1 = Announcement.from_bytes(
    b'{"build_id":"b1","version":"1.0.0","hardware":"h","channel":"stable","request_id":"r"}'
)
ann2 = Announcement.from_bytes(
    b'{"build_id":"b2","version":"2.0.0","hardware":"h","channel":"stable"}'
)
sts = [
    StatusReport.from_bytes(f'{{"state":"{s}","build_id":"b2"}}'.encode())
    for s in ("downloading", "verifying", "installing", "installed")
]
events = []
now = datetime.now(UTC)
if a.kind == "announce":
    for i in range(a.events):
        events.append(AnnouncementSeen(f"d{i % a.devices}", ann1, "b2", now))
else:
    step = 0
    while len(events) < a.events:
        for d in range(a.devices):
            dev = f"d{d}"
            phase = step % 6
            if phase == 0:
                events.append(AnnouncementSeen(dev, ann1, "b2", now))
            elif phase < 5:
                events.append(StatusSeen(dev, sts[phase - 1], now))
            else:
                events.append(AnnouncementSeen(dev, ann2, None, now))
        step += 1
    events = events[: a.events]
t = time.perf_counter()
for i in range(0, len(events), a.batch):
    reg.apply(events[i : i + a.batch])
dt = time.perf_counter() - t
print(
    f"kind={a.kind} events={len(events)} batch={a.batch} total={dt:.2f}s per_event={dt / len(events) * 1e6:.0f}us rate={len(events) / dt:,.0f}/s"
)
