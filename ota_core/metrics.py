"""Prometheus metrics shared by the bridge and the HTTP side.

Counters are incremented at the edges (the bridge's MQTT callbacks, the HTTP
routes); this module only declares them, so every process exposes the same
names. Each process serves its own registry: the HTTP side at ``GET /metrics``,
each bridge on ``OTA_METRICS_PORT``.

=====================================  ==========================================
metric                                 meaning
=====================================  ==========================================
``ota_announcements_total``            announcements received by the bridge
``ota_offers_total{status}``           replies sent: update-available, up-to-date, error
``ota_errors_total{kind}``             rejected input by error code (bad-request, unknown-build, …)
``ota_offer_latency_seconds``          announcement received → offer handed to the MQTT client
``ota_status_reports_total{state}``    status reports received, by state
``ota_pushes_total``                   offers pushed without a request (releases, rollouts)
``ota_registry_backlog``               registry events waiting to be written
``ota_downloads_total``                package downloads started (HTTP)
``ota_download_bytes_total``           package bytes sent (HTTP)
``ota_rollouts{state}``                rollouts by state (refreshed with the catalog)
=====================================  ==========================================
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

ANNOUNCEMENTS = Counter(
    "ota_announcements", "Announcements received by the bridge", registry=REGISTRY
)
OFFERS = Counter("ota_offers", "Replies sent to devices, by status", ["status"], registry=REGISTRY)
ERRORS = Counter("ota_errors", "Rejected device input, by error code", ["kind"], registry=REGISTRY)
OFFER_LATENCY = Histogram(
    "ota_offer_latency_seconds",
    "Announcement received to offer handed to the MQTT client",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=REGISTRY,
)
STATUS_REPORTS = Counter(
    "ota_status_reports", "Status reports received, by state", ["state"], registry=REGISTRY
)
PUSHES = Counter("ota_pushes", "Offers pushed without a request", registry=REGISTRY)
REGISTRY_BACKLOG = Gauge(
    "ota_registry_backlog", "Registry events waiting to be written", registry=REGISTRY
)
DOWNLOADS = Counter("ota_downloads", "Package downloads started", registry=REGISTRY)
DOWNLOAD_BYTES = Counter("ota_download_bytes", "Package bytes sent", registry=REGISTRY)
ROLLOUTS = Gauge("ota_rollouts", "Rollouts by state", ["state"], registry=REGISTRY)
