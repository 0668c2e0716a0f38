"""``GET /healthz``: 200 while the database answers, 503 (with an error body) when not."""

from __future__ import annotations

from fastapi import APIRouter

from http_files.deps import ServicesDep
from http_files.schemas import ErrorBody, Health

router = APIRouter(tags=["operations"])


@router.get(
    "/healthz",
    summary="Liveness and database reachability",
    response_model=Health,
    responses={503: {"model": ErrorBody, "description": "database unreachable"}},
)
def healthz(services: ServicesDep) -> Health:
    # refresh() always runs a SELECT on the catalog revision, so this proves the
    # database answers; a failure surfaces as ServiceUnavailable → 503.
    catalog = services.catalog.refresh()
    return Health(releases=len(catalog), catalog_revision=catalog.revision)
