"""GET /metrics on the HTTP side: Prometheus text, downloads and bytes as sent.

The metrics are process-wide (other tests in this process move them too), so
each test compares a scrape before and after its own requests.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.http_files.live_server import Running

CONTENT = bytes(range(256)) * 40


def scrape(server: Running) -> dict[str, float]:
    response = server.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if not sample.labels
    }


def test_downloads_and_bytes_sent_are_counted(server: Running) -> None:
    server.publish("build-m1", "2.0.1", CONTENT, filename="fw-metrics.bin")
    before = scrape(server)
    assert server.get("/packages/fw-metrics.bin").content == CONTENT
    partial = server.get("/packages/fw-metrics.bin", headers={"Range": "bytes=0-99"})
    assert partial.status_code == 206
    after = scrape(server)
    assert after["ota_downloads_total"] - before["ota_downloads_total"] == 2
    # The full file plus the 100 bytes of the range: bytes as sent, not file sizes.
    assert after["ota_download_bytes_total"] - before["ota_download_bytes_total"] == (
        len(CONTENT) + 100
    )


def test_metrics_list_every_shared_metric(server: Running) -> None:
    text = server.get("/metrics").text
    for name in ("ota_announcements_total", "ota_offer_latency_seconds", "ota_registry_backlog"):
        assert name in text


def test_rollout_states_are_listed(server: Running) -> None:
    text = server.get("/metrics").text
    for state in ("active", "paused", "aborted", "completed"):
        assert f'ota_rollouts{{state="{state}"}}' in text
