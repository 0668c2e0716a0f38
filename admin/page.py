"""The admin page (``GET /admin/metadata``) and its form posts.

The seed's form endpoints keep their field names and behaviour for scripts
(``curl -u admin:PW -d build_id=… -d version=… -d filename=… …/admin/metadata/add``):
success is a 303 to the page; a failure is the product's JSON error body. A
browser (``Accept: text/html``) gets the page back instead, with the error shown
above the forms, the status code of the error, and what it typed kept in the form.
"""

from __future__ import annotations

from datetime import UTC
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from admin.rendering import base_path, render
from admin.schemas import ReleaseFields
from admin.uploads import UPLOAD_FORM_SCHEMA, publish_upload, read_upload_fields
from http_files.deps import ServicesDep
from ota_core.catalog import Catalog
from ota_core.errors import OtaError
from ota_core.identifiers import check_filename
from ota_core.services import Services

_MAX_LISTED_FILES = 500

router = APIRouter(tags=["admin page"])
upload_router = APIRouter(tags=["admin page"])

FormText = Annotated[str, Form()]
OptionalFormText = Annotated[str | None, Form()]


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _unpublished_files(services: Services, catalog: Catalog) -> list[str]:
    """Plain-named files in packages/ that no release uses yet (for the add-by-name form)."""
    names = []
    for entry in sorted(services.packages.root.iterdir()):
        if entry.name in catalog.by_filename or not entry.is_file():
            continue
        try:
            check_filename(entry.name)
        except OtaError:
            continue
        names.append(entry.name)
        if len(names) >= _MAX_LISTED_FILES:
            break
    return names


def _page_context(services: Services, catalog: Catalog) -> dict[str, Any]:
    rows = [
        {
            "build_id": r.build_id,
            "version": r.version,
            "filename": r.filename,
            "size": human_size(r.size),
            "sha256": r.sha256,
            "hardware": r.hardware or "any",
            "channel": r.channel or "any",
            "notes": r.notes or "",
            "created": r.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "rollout": catalog.rollouts.by_build.get(r.build_id),
        }
        for r in catalog
    ]
    return {
        "releases": rows,
        "key_id": services.releases.signer.key_id,
        "max_upload": human_size(services.settings.max_upload_bytes),
        "unpublished": _unpublished_files(services, catalog),
    }


def render_page(
    request: Request,
    services: Services,
    *,
    error: OtaError | None = None,
    form: dict[str, str] | None = None,
    which: str = "",
) -> HTMLResponse:
    """Render the page; blocking (database and folder listing): call from the threadpool."""
    context = _page_context(services, services.catalog.refresh())
    context.update(
        error=None if error is None else {"code": error.code, "detail": error.detail},
        form=form or {},
        which=which,
    )
    return render(
        request,
        "metadata.html",
        context,
        status_code=200 if error is None else error.http_status,
        section="releases",
    )


def wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


def back_to_page(request: Request, path: str = "/admin/metadata") -> RedirectResponse:
    # 303: the browser follows with a GET, so a reload never re-posts the form.
    return RedirectResponse(f"{base_path(request)}{path}", 303)


@router.get("/", include_in_schema=False)
def admin_home(request: Request) -> RedirectResponse:
    return back_to_page(request)


@router.get(
    "/metadata",
    name="admin_page",
    summary="Admin page: list, add and delete releases",
    response_class=HTMLResponse,
)
def admin_page(request: Request, services: ServicesDep) -> HTMLResponse:
    return render_page(request, services)


@router.post(
    "/metadata/add",
    summary="Publish a file already in packages/ (the seed's form)",
    description="Form fields `build_id`, `version`, `filename` (+ optional `hardware`, "
    "`channel`, `notes`). 303 to the admin page on success.",
    status_code=303,
)
def add_from_form(
    request: Request,
    services: ServicesDep,
    build_id: FormText,
    version: FormText,
    filename: FormText,
    hardware: OptionalFormText = None,
    channel: OptionalFormText = None,
    notes: OptionalFormText = None,
) -> Response:
    typed = {
        "build_id": build_id,
        "version": version,
        "filename": filename,
        "hardware": hardware or "",
        "channel": channel or "",
        "notes": notes or "",
    }
    try:
        fields = ReleaseFields.parse(dict(typed))
        services.releases.add_existing(fields.to_request())
    except OtaError as e:
        if wants_html(request):
            return render_page(request, services, error=e, form=typed, which="existing")
        raise
    return back_to_page(request)


@router.post(
    "/metadata/delete",
    summary="Delete a release (the seed's form)",
    description="Form field `build_id`; `delete_file=true` also removes its file from "
    "packages/. 303 to the admin page on success.",
    status_code=303,
)
def delete_from_form(
    request: Request,
    services: ServicesDep,
    build_id: FormText,
    delete_file: OptionalFormText = None,
) -> Response:
    remove_file = (delete_file or "").lower() in {"1", "true", "on", "yes"}
    try:
        services.releases.delete(build_id, delete_file=remove_file)
    except OtaError as e:
        if wants_html(request):
            return render_page(request, services, error=e, which="delete")
        raise
    return back_to_page(request)


@upload_router.post(
    "/metadata/upload",
    summary="Upload a package and publish it (the page's upload form)",
    status_code=303,
    openapi_extra=UPLOAD_FORM_SCHEMA,
)
async def upload_from_form(request: Request, services: ServicesDep) -> Response:
    fields, upload = await read_upload_fields(request)
    try:
        _, rollout = await publish_upload(services, fields, upload)
    except OtaError as e:
        if wants_html(request):
            typed = {k: v for k, v in fields.items() if k != "sha256"}
            return await run_in_threadpool(
                render_page, request, services, error=e, form=typed, which="upload"
            )
        raise
    if rollout is not None:  # staged: the rollout page is where the admin watches it
        return back_to_page(request, f"/admin/rollouts/{rollout.rollout_id}")
    return back_to_page(request)
