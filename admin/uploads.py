"""Receiving an uploaded package and publishing it, shared by the page and the API.

How the size limit is enforced, from the outside in:

1. The upload routes are mounted with a request-body limit of
   ``max_upload_bytes`` plus room for the form fields (:func:`upload_body_limit`).
   A ``Content-Length`` above it is refused with 413 before a byte is read; a
   chunked body is cut off with 413 as soon as it passes the limit. Starlette
   spools the file part to an anonymous temporary file while parsing, so that
   limit bounds the temporary disk use too, and the spool is closed (deleted)
   on any failure.
2. These routes parse the form themselves, *after* the admin and cross-site
   checks have run, so an unauthenticated client gets its 401/403 without the
   server reading (or spooling) its body.
3. The file is streamed in chunks into :meth:`ReleaseService.add_upload`, which
   stops at exactly ``max_upload_bytes`` (413), checks a declared ``sha256``
   (400), and leaves nothing in ``packages/`` when anything fails.

Hashing and signing run in the threadpool.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from admin.rollouts import ROLLOUT_FORM_FIELDS, rollout_from_form
from admin.schemas import ReleaseFields, parse_sha256
from ota_core.errors import InvalidInput
from ota_core.models import Release
from ota_core.package_files import read_chunks
from ota_core.rollouts import Rollout
from ota_core.services import Services

#: Room for the multipart boundaries and the text fields next to the file.
FORM_OVERHEAD_BYTES = 1024 * 1024
_TEXT_FIELDS = (
    "build_id",
    "version",
    "filename",
    "hardware",
    "channel",
    "notes",
    "sha256",
    *ROLLOUT_FORM_FIELDS,
)

#: What the upload form looks like, for the OpenAPI description (the route parses it itself).
UPLOAD_FORM_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "build_id", "version"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "build_id": {"type": "string", "example": "build-1002"},
                        "version": {"type": "string", "example": "1.2.0"},
                        "filename": {
                            "type": "string",
                            "description": "name to store under; default: the uploaded file's name",
                        },
                        "hardware": {"type": "string"},
                        "channel": {"type": "string"},
                        "notes": {"type": "string"},
                        "sha256": {
                            "type": "string",
                            "description": "declared SHA-256; on mismatch nothing is stored",
                        },
                    },
                }
            }
        },
    }
}


def upload_body_limit(max_upload_bytes: int) -> int:
    return max_upload_bytes + FORM_OVERHEAD_BYTES


def client_file_name(name: str | None) -> str:
    """The base name of a client-supplied file name (some browsers send a full path)."""
    return (name or "").replace("\\", "/").rsplit("/", 1)[-1]


async def read_upload_fields(request: Request) -> tuple[dict[str, str], UploadFile | None]:
    """Parse the multipart form: its text fields (as the user typed them) and the file."""
    form = await request.form(max_files=1, max_fields=len(_TEXT_FIELDS) + 4)
    upload = form.get("file")
    fields = {
        name: value
        for name, value in form.multi_items()
        if name in _TEXT_FIELDS and isinstance(value, str)
    }
    return fields, upload if isinstance(upload, UploadFile) else None


async def publish_upload(
    services: Services, fields: dict[str, str], upload: UploadFile | None
) -> tuple[Release, Rollout | None]:
    """Validate the fields, then stream the file into the packages folder and publish it,
    under a staged rollout when the form asks for one."""
    if upload is None:
        raise InvalidInput("a package file is required in the 'file' field")
    try:
        release_fields = ReleaseFields.parse(
            {
                "build_id": fields.get("build_id", ""),
                "version": fields.get("version", ""),
                "filename": fields.get("filename") or client_file_name(upload.filename),
                "hardware": fields.get("hardware"),
                "channel": fields.get("channel"),
                "notes": fields.get("notes"),
            }
        )
        expected = parse_sha256(fields.get("sha256"))
        # Checked before a byte is stored: a typo in the stages must not publish to everyone.
        staged = rollout_from_form(release_fields.build_id, fields)
        # Release and rollout go in one transaction: never visible unstaged, not even briefly.
        release = await run_in_threadpool(
            services.releases.add_upload,
            release_fields.to_request(),
            read_chunks(upload.file),
            services.settings.max_upload_bytes,
            expected,
            None if staged is None else staged.to_spec(),
        )
    finally:
        await upload.close()
    if staged is None:
        return release, None
    catalog = await run_in_threadpool(services.catalog.refresh)
    return release, catalog.rollouts.by_build.get(release.build_id)
