"""Time from ReleaseService.add_upload returning to each known device receiving its push.

usage (repo root): .venv/bin/python /tmp/bench/push_latency.py [--devices 5] [--rounds 5]
Bridge in-process (default OTA_CATALOG_POLL_SECONDS=0.5, OTA_PUSH_RATE=500), admin on its own
engine (as `ota http`), Mosquitto from the repo's mosquitto.conf (test relaxation).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, os.getcwd())
import logging

logging.basicConfig(level=logging.WARNING)
from broker_bridge.bridge import Bridge
from ota_core.releases import ReleaseRequest
from ota_core.services import Services
from tests.support import MqttProbe
from tests.support.mosquitto import start_mosquitto
from tests.support.ota_dirs import OtaDirs, ReleaseKeyPems

ap = argparse.ArgumentParser()
ap.add_argument("--devices", type=int, default=5)
ap.add_argument("--rounds", type=int, default=5)
ap.add_argument("--poll", type=float, default=0.5)
a = ap.parse_args()
work = Path(tempfile.mkdtemp())
broker = start_mosquitto(work / "mosq")
dirs = OtaDirs.create(work / "ota", ReleaseKeyPems.generate(work / "keys0"))
settings = dirs.settings(
    broker_url=broker.url,
    mqtt_client_id=f"b-{uuid.uuid4().hex[:6]}",
    catalog_poll_seconds=a.poll,
    log_level="WARNING",
)
services = Services.from_settings(settings)
admin = Services.from_settings(settings)
bridge = Bridge(settings, services)
bridge.start()
assert bridge.wait_ready(20)
probe = MqttProbe(broker.url)
probe.subscribe("ota/v1/devices/+/offer")


def add(n):
    admin.releases.add_upload(
        ReleaseRequest(f"b{n}", f"{n}.0.0", f"fw-{n}.bin"), [b"x" * 1000], 10**6
    )


add(1)
for d in range(a.devices):
    probe.publish(
        f"ota/v1/devices/d{d}/announce", json.dumps({"build_id": "b1", "request_id": "r"})
    )
for _ in range(a.devices):
    probe.expect(20)
bridge.flush_registry(20)
lat_all, lat_last = [], []
for r in range(2, 2 + a.rounds):
    t0 = time.monotonic()
    add(r)
    got = []
    while len(got) < a.devices:
        m = probe.expect(20)
        if json.loads(m.payload).get("request_id") is None:
            got.append(time.monotonic() - t0)
    lat_all += got
    lat_last.append(max(got))
print(
    f"devices={a.devices} rounds={a.rounds} poll={a.poll}s push latency: median={statistics.median(lat_all) * 1000:.0f}ms "
    f"last-device median={statistics.median(lat_last) * 1000:.0f}ms max={max(lat_all) * 1000:.0f}ms"
)
probe.close()
bridge.stop()
services.close()
admin.close()
broker.stop()
