"""The bridge's Prometheus endpoint (OTA_METRICS_PORT) over a real socket, real Mosquitto.

The metrics are process-wide, so the test compares scrapes before and after.
"""

from __future__ import annotations

import time
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from ota_core.models import ErrorReply
from tests.broker_bridge.peers import WAIT, FakeDevice, add_release, bridge_settings, running_bridge
from tests.support import MosquittoServer, free_port


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def delta(after: dict[Any, float], before: dict[Any, float], name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_bridge_counts_announcements_offers_errors_and_statuses(
    ota_dirs: Any, mosquitto: MosquittoServer
) -> None:
    port = free_port()
    settings = bridge_settings(ota_dirs, mosquitto.url, "5", metrics_port=port)
    with running_bridge(settings) as (bridge, services):
        add_release(services, "build-1", "1.0.0")
        add_release(services, "build-2", "1.1.0")
        device = FakeDevice(mosquitto.url, settings, "dev-metrics")
        try:
            before = scrape(port)
            device.expect_update(build_id="build-1", hardware="h", channel="stable",
                                 request_id="r1")
            device.expect_up_to_date(build_id="build-2", hardware="h", channel="stable",
                                     request_id="r2")
            assert isinstance(device.announce_raw(b"not json"), ErrorReply)
            device.report("installed", "build-2")
            # Status reports have no reply: wait until the registry has it.
            assert bridge.flush_registry(WAIT)
            deadline = time.monotonic() + WAIT
            while bridge.stats.statuses < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            after = scrape(port)
        finally:
            device.close()
    assert delta(after, before, "ota_announcements_total") == 3
    assert delta(after, before, "ota_offers_total", status="update-available") == 1
    assert delta(after, before, "ota_offers_total", status="up-to-date") == 1
    assert delta(after, before, "ota_offers_total", status="error") == 1
    assert delta(after, before, "ota_errors_total", kind="bad-request") == 1
    assert delta(after, before, "ota_status_reports_total", state="installed") == 1
    assert delta(after, before, "ota_offer_latency_seconds_count") == 3
    assert ("ota_registry_backlog", ()) in after
