"""Dependency aliases shared by the HTTP routers (and the admin routers).

The app keeps its :class:`~ota_core.services.Services` on ``app.state``; routes
ask for it with :data:`ServicesDep`, and for the current catalog snapshot with
:data:`CatalogDep` (a cheap revision check against the database, so a release
added by the admin side or another process is visible at once).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ota_core.catalog import Catalog
from ota_core.services import Services


async def get_services(request: Request) -> Services:
    # async: reading app.state needs no worker thread (sync dependencies get one each).
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def current_catalog(services: ServicesDep) -> Catalog:
    # Plain def: the revision SELECT runs in the threadpool, not on the event loop.
    return services.catalog.refresh()


CatalogDep = Annotated[Catalog, Depends(current_catalog)]
