"""``GET /metrics``: this process's Prometheus metrics, in the text exposition format.

The metric objects live in :mod:`ota_core.metrics`; the HTTP side counts
downloads and bytes in :mod:`http_files.packages`. Unauthenticated like
``/health``: scrapers rarely carry credentials, and nothing here is secret
(restrict it at the network edge if the counts themselves matter).
"""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from http_files.deps import ServicesDep
from ota_core.errors import OtaError
from ota_core.metrics import REGISTRY, ROLLOUTS
from ota_core.rollouts import RolloutState
from ota_core.store import Database
from ota_core.store.rollouts import RolloutStore

router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
def prometheus_metrics(services: ServicesDep) -> Response:
    _refresh_rollouts(services.database)
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def _refresh_rollouts(database: Database) -> None:
    """Rollouts by state, read at scrape time (one small SELECT every scrape interval)."""
    try:
        rollouts = RolloutStore(database).all()
    except OtaError:
        return  # the database is away: keep the last figures, /health says the rest
    counts = dict.fromkeys(RolloutState, 0)
    for rollout in rollouts:
        counts[rollout.state] += 1
    for state, count in counts.items():
        ROLLOUTS.labels(state=state.value).set(count)
