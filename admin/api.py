"""The JSON admin API under ``/admin/api`` (HTTP Basic, like the page)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from fastapi.responses import JSONResponse

from admin.fleet import (
    API_DEFAULT_LIMIT,
    MAX_LIMIT,
    DeviceQuery,
    device_record,
    explain_device,
    find_devices,
)
from admin.rollouts import (
    RolloutOut,
    RolloutStoreDep,
    RolloutSummaryOut,
    RolloutView,
    perform,
)
from admin.schemas import (
    DeviceDetailOut,
    DeviceOut,
    ExplanationOut,
    ImportResult,
    ReleaseFields,
    ReleaseOut,
    RolloutActionBody,
    RolloutCreate,
)
from admin.uploads import UPLOAD_FORM_SCHEMA, publish_upload, read_upload_fields
from http_files.deps import CatalogDep, ServicesDep
from http_files.schemas import ErrorBody
from ota_core.releases import export_metadata

#: A metadata.json import is small text; a few MiB is thousands of releases.
MAX_IMPORT_BODY_BYTES = 4 * 1024 * 1024

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody},
    401: {"model": ErrorBody},
    403: {"model": ErrorBody},
}


class RolloutAction(StrEnum):
    ADVANCE = "advance"
    PAUSE = "pause"
    RESUME = "resume"
    ABORT = "abort"


router = APIRouter(tags=["admin API"], responses=_ERRORS)
upload_router = APIRouter(tags=["admin API"], responses=_ERRORS)


@router.get("/releases", summary="All releases, newest version first")
def list_releases(services: ServicesDep, catalog: CatalogDep) -> list[ReleaseOut]:
    book = catalog.rollouts.by_build
    return [ReleaseOut.of(r, services.offers, book.get(r.build_id)) for r in catalog]


@upload_router.post(
    "/releases",
    summary="Upload a package and publish it",
    description="Multipart form: `file`, `build_id`, `version`, optional `filename`, "
    "`hardware`, `channel`, `notes`, `sha256` (declared checksum: a mismatch is a 400 and "
    "nothing is stored). 413 above the upload limit, 409 when the build id or file name "
    "is taken. With `stages` (e.g. `10,50,100`; optional `failure_threshold_percent`, "
    "`failure_min_count`, `auto_advance_seconds`, `rollout_channel`, `rollout_hardware`, "
    "`device_ids`) the release starts under a staged rollout instead of going to every "
    "eligible device at once.",
    status_code=201,
    response_model=ReleaseOut,
    responses={409: {"model": ErrorBody}, 413: {"model": ErrorBody}},
    openapi_extra=UPLOAD_FORM_SCHEMA,
)
async def upload_release(request: Request, services: ServicesDep) -> JSONResponse:
    fields, upload = await read_upload_fields(request)
    release, rollout = await publish_upload(services, fields, upload)
    body = ReleaseOut.of(release, services.offers, rollout).model_dump(mode="json")
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


@router.get(
    "/devices",
    summary="Devices, filtered and paged",
    description="Every filter is optional and exact: `version`, `status` (last status "
    "report: downloading, verifying, installing, installed, failed, or `none` for never), "
    "`channel`, `hardware`, `seen_after`/`seen_before` (ISO 8601; no zone means UTC). "
    f"Sorted by device id; `limit` (default {API_DEFAULT_LIMIT}, at most {MAX_LIMIT}) and "
    "`offset` page through them. The `X-Total-Count` header says how many match.",
)
def list_devices(
    response: Response,
    services: ServicesDep,
    query: Annotated[DeviceQuery, Depends()],
) -> list[DeviceOut]:
    wanted = query.to_filter(default_limit=API_DEFAULT_LIMIT)
    page = find_devices(services.database, wanted)
    response.headers["X-Total-Count"] = str(page.total)
    return [DeviceOut.model_validate(d) for d in page.devices]


@router.get(
    "/devices/{device_id}",
    summary="One device, with every build offered to it and its newest events",
    responses={404: {"model": ErrorBody}},
)
def get_device(device_id: str, services: ServicesDep) -> DeviceDetailOut:
    record = device_record(services.registry, device_id)
    return DeviceDetailOut.of(
        record,
        services.registry.installs(record.device_id),
        services.registry.history(record.device_id),
    )


@router.get(
    "/devices/{device_id}/explain",
    summary="Which release this device would be offered now, and why",
    description="For each release newer than the device's current version: hardware, "
    "channel, and for a staged rollout its state, audience and the device's cohort bucket "
    "against the reached stage's threshold. Uses the device's last announcement.",
    responses={404: {"model": ErrorBody}},
)
def explain_device_offer(
    device_id: str, services: ServicesDep, catalog: CatalogDep
) -> ExplanationOut:
    record = device_record(services.registry, device_id)
    return ExplanationOut.of(record.device_id, explain_device(catalog, record))


@router.post(
    "/rollouts",
    summary="Start a staged rollout of a release",
    description="Stages are increasing percentages (e.g. `[1, 10, 50, 100]`); a device's "
    "cohort is fixed by a hash of its id. The rollout pauses itself when, among devices "
    "that finished in the current stage, more than `failure_threshold_percent` failed "
    "(and at least `failure_min_count`). `auto_advance_seconds` advances after that wait; "
    "without it, advance by hand. 409 if the release already has one in progress.",
    status_code=201,
    responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}},
)
def start_rollout(body: RolloutCreate, store: RolloutStoreDep, services: ServicesDep) -> RolloutOut:
    rollout = store.create(body.to_spec())
    return RolloutView.load(store, services.catalog.refresh(), rollout.rollout_id).to_out()


@router.get("/rollouts", summary="Every rollout, newest first")
def list_rollouts(store: RolloutStoreDep, catalog: CatalogDep) -> list[RolloutSummaryOut]:
    return [RolloutSummaryOut.of(r, catalog.by_build.get(r.build_id)) for r in store.all()]


@router.get(
    "/rollouts/{rollout_id}",
    summary="One rollout: state, counts per stage, failure rate, progress and log",
    responses={404: {"model": ErrorBody}},
)
def get_rollout(rollout_id: int, store: RolloutStoreDep, catalog: CatalogDep) -> RolloutOut:
    return RolloutView.load(store, catalog, rollout_id).to_out()


@router.post(
    "/rollouts/{rollout_id}/{action}",
    summary="Advance, pause, resume or abort a rollout",
    description="`advance` moves to the next stage (on the last one: completes); `pause` "
    "and `abort` take an optional `reason`; abort stops new offers without disturbing "
    "devices mid-install. A transition the state does not allow is a 409, as is an "
    "`expected_stage_index` the rollout has moved past.",
    responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}},
)
def rollout_action(
    rollout_id: int,
    action: RolloutAction,
    store: RolloutStoreDep,
    catalog: CatalogDep,
    body: Annotated[RolloutActionBody | None, Body()] = None,
) -> RolloutOut:
    perform(
        store,
        rollout_id,
        action.value,
        reason=body.reason if body else None,
        expected_stage=body.expected_stage_index if body else None,
    )
    return RolloutView.load(store, catalog, rollout_id).to_out()


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
