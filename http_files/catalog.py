"""Read-only views of the release catalog: the seed's ``/metadata`` and ``/update``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from http_files.deps import CatalogDep, ServicesDep
from http_files.schemas import ErrorBody, MetadataEntry, ReleaseInfo
from ota_core.errors import UnknownBuild
from ota_core.identifiers import ID_PATTERN
from ota_core.releases import export_metadata

router = APIRouter(tags=["catalog"])


@router.get(
    "/metadata",
    summary="All releases in the seed's metadata.json shape",
    description='`{build_id: {"version": …, "filename": …}}`, newest version first.',
    response_model=dict[str, MetadataEntry],
)
def metadata(catalog: CatalogDep) -> dict[str, dict[str, str]]:
    return export_metadata(catalog)


@router.get(
    "/update",
    summary="The release published under a build id",
    description=(
        "Everything a device needs to fetch and verify the release published as `build_id`: "
        "`version`, `filename`, `url` (`/packages/<filename>`), `size`, `checksum` (SHA-256 hex), "
        "`signature` (over the checksum), `manifest` and `manifest_signature` (over the "
        "manifest's bytes), `key_id`, and its `hardware`/`channel` restrictions. "
        "404 when no release has that build id. To ask *which* release a device should "
        "install, use `POST /check-update`."
    ),
    response_model=ReleaseInfo,
    response_model_exclude_none=True,
    responses={400: {"model": ErrorBody}, 404: {"model": ErrorBody}},
)
def update_info(
    build_id: Annotated[str, Query(pattern=ID_PATTERN, description="e.g. build-1001")],
    services: ServicesDep,
    catalog: CatalogDep,
) -> ReleaseInfo:
    release = catalog.by_build.get(build_id)
    if release is None:
        raise UnknownBuild(f"no release with build_id {build_id!r}")
    return ReleaseInfo.of(release, services.offers)
