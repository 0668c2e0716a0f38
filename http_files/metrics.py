"""``GET /metrics``: this process's Prometheus metrics, in the text exposition format.

The metric objects live in :mod:`ota_core.metrics`; the HTTP side counts
downloads and bytes in :mod:`http_files.packages`. Unauthenticated like
``/health``: scrapers rarely carry credentials, and nothing here is secret
(restrict it at the network edge if the counts themselves matter).
"""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ota_core.metrics import REGISTRY

router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
def prometheus_metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
