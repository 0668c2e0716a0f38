"""The JSON admin API under ``/admin/api`` (HTTP Basic, like the page)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import JSONResponse

from admin.schemas import DeviceOut, ImportResult, ReleaseFields, ReleaseOut
from admin.uploads import UPLOAD_FORM_SCHEMA, publish_upload, read_upload_fields
from http_files.deps import CatalogDep, ServicesDep
from http_files.schemas import ErrorBody
from ota_core.errors import NotFound
from ota_core.identifiers import check_device_id
from ota_core.releases import export_metadata

#: A metadata.json import is small text; a few MiB is thousands of releases.
MAX_IMPORT_BODY_BYTES = 4 * 1024 * 1024

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody},
    401: {"model": ErrorBody},
    403: {"model": ErrorBody},
}

router = APIRouter(tags=["admin API"], responses=_ERRORS)
upload_router = APIRouter(tags=["admin API"], responses=_ERRORS)


@router.get("/releases", summary="All releases, newest version first")
def list_releases(services: ServicesDep, catalog: CatalogDep) -> list[ReleaseOut]:
    return [ReleaseOut.of(r, services.offers) for r in catalog]


@upload_router.post(
    "/releases",
    summary="Upload a package and publish it",
    description="Multipart form: `file`, `build_id`, `version`, optional `filename`, "
    "`hardware`, `channel`, `notes`, `sha256` (declared checksum: a mismatch is a 400 and "
    "nothing is stored). 413 above the upload limit, 409 when the build id or file name "
    "is taken.",
    status_code=201,
    response_model=ReleaseOut,
    responses={409: {"model": ErrorBody}, 413: {"model": ErrorBody}},
    openapi_extra=UPLOAD_FORM_SCHEMA,
)
async def upload_release(request: Request, services: ServicesDep) -> JSONResponse:
    fields, upload = await read_upload_fields(request)
    release = await publish_upload(services, fields, upload)
    body = ReleaseOut.of(release, services.offers).model_dump(mode="json")
    return JSONResponse(body, status_code=201)


@router.post(
    "/releases/from-file",
    summary="Publish a file already in packages/",
    status_code=201,
    responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}},
)
def add_release_from_file(fields: ReleaseFields, services: ServicesDep) -> ReleaseOut:
    release = services.releases.add_existing(fields.to_request())
    return ReleaseOut.of(release, services.offers)


@router.delete(
    "/releases/{build_id}",
    summary="Delete a release",
    description="Devices stop being offered it at once. `delete_file=true` also removes "
    "its file from packages/.",
    responses={404: {"model": ErrorBody}},
)
def delete_release(
    build_id: str,
    services: ServicesDep,
    delete_file: Annotated[bool, Query()] = False,
) -> ReleaseOut:
    release = services.releases.delete(build_id, delete_file=delete_file)
    return ReleaseOut.of(release, services.offers)


@router.get("/devices", summary="Every device seen, with its last build and status")
def list_devices(services: ServicesDep) -> list[DeviceOut]:
    return [DeviceOut.model_validate(d) for d in services.registry.all()]


@router.get("/devices/{device_id}", summary="One device", responses={404: {"model": ErrorBody}})
def get_device(device_id: str, services: ServicesDep) -> DeviceOut:
    record = services.registry.get(check_device_id(device_id))
    if record is None:
        raise NotFound(f"no device {device_id!r} has been seen")
    return DeviceOut.model_validate(record)


@router.get(
    "/metadata/export",
    summary="Export releases as the seed's metadata.json",
    description='`{"build-1001": {"version": "1.1.0", "filename": "ota-1.1.0.zip"}}`',
)
def export_metadata_json(catalog: CatalogDep) -> dict[str, dict[str, str]]:
    return export_metadata(catalog)


@router.post(
    "/metadata/import",
    summary="Import the seed's metadata.json",
    description="Publishes each entry whose file is in packages/ (hashing and signing it). "
    "Entries that cannot be imported (missing file, duplicate, bad version) are listed "
    "in `problems`; the others are still added.",
    max_body_size=MAX_IMPORT_BODY_BYTES,
)
def import_metadata_json(
    data: Annotated[
        dict[str, Any],
        Body(examples=[{"build-1001": {"version": "1.1.0", "filename": "ota-1.1.0.zip"}}]),
    ],
    services: ServicesDep,
) -> ImportResult:
    added, problems = services.releases.import_metadata(data)
    return ImportResult(added=[r.build_id for r in added], problems=problems)
