"""Admin side: the admin page and the JSON admin API, all behind HTTP Basic."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from admin import api, fleet_pages, page
from admin.auth import refuse_cross_site, require_admin
from admin.uploads import upload_body_limit


def admin_router(max_upload_bytes: int) -> APIRouter:
    """Every admin route, under ``/admin``; the upload routes accept ``max_upload_bytes``."""
    # Router-level dependencies: no admin route can be added without both checks.
    router = APIRouter(
        prefix="/admin", dependencies=[Depends(require_admin), Depends(refuse_cross_site)]
    )
    limit = upload_body_limit(max_upload_bytes)
    router.include_router(page.router)
    router.include_router(fleet_pages.router)
    router.include_router(page.upload_router, max_body_size=limit)
    router.include_router(api.router, prefix="/api")
    router.include_router(api.upload_router, prefix="/api", max_body_size=limit)
    return router


__all__ = ["admin_router"]
