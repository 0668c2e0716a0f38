"""Package downloads and their checksums.

``GET /packages/{filename}`` streams a file from the packages folder with
``Content-Length``, an ``ETag`` and byte ``Range`` support (Starlette's
:class:`~starlette.responses.FileResponse` implements single and multiple
ranges, ``If-Range`` and 416; this module adds the product's ETag and
``If-None-Match``).

Which files are served: like the seed, any regular file directly inside the
packages folder whose name is a plain package name — published or not — so an
operator can fetch and check a file before publishing it. Names are validated
and resolved by :meth:`~ota_core.package_files.PackageFolder.resolve`: paths,
``..``, hidden names (including in-progress uploads, which are ``.upload-*``),
directories and symlinks that leave the folder are refused with 400/404.
"""

from __future__ import annotations

import stat
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse
from starlette.types import Message, Receive, Scope, Send

from http_files.deps import CatalogDep, ServicesDep
from http_files.schemas import ChecksumInfo, ErrorBody
from ota_core.errors import PackageNotFound
from ota_core.identifiers import check_filename
from ota_core.metrics import DOWNLOAD_BYTES, DOWNLOADS

router = APIRouter(tags=["packages"])

_ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorBody, "description": "not a plain package file name"},
    404: {"model": ErrorBody, "description": "no such package"},
}


class _CountedFileResponse(FileResponse):
    """A FileResponse that counts the bytes it actually sends (Range-aware for free:
    only the requested slices pass through ``send``)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counting_send(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.body":
                DOWNLOAD_BYTES.inc(len(message.get("body", b"")))
            elif kind == "http.response.pathsend":
                # A server doing the send itself (ASGI pathsend): the whole file goes.
                DOWNLOAD_BYTES.inc(self.file_size)
            await send(message)

        await super().__call__(scope, receive, counting_send)

    file_size = 0


def _etag_matches(if_none_match: str, etag: str) -> bool:
    # Weak comparison, as RFC 9110 requires for If-None-Match.
    candidates = [c.strip() for c in if_none_match.split(",")]
    return any(c == "*" or c.removeprefix("W/") == etag for c in candidates)


# HEAD (sizes, ETag for download managers) is served by the same function, kept out of
# the OpenAPI schema so the operation appears once.
@router.head("/packages/{filename}", include_in_schema=False)
@router.get(
    "/packages/{filename}",
    summary="Download a package (resumable)",
    description=(
        "Streams the file with `Content-Length`, `Accept-Ranges: bytes` and an `ETag` "
        "(the quoted SHA-256 for a published release). `Range: bytes=…` gives 206 with "
        "`Content-Range` (416 when unsatisfiable); `If-None-Match` gives 304. Unpublished "
        "files in the packages folder are served too, as in the seed."
    ),
    response_class=FileResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}},
        206: {"description": "partial content"},
        304: {"description": "not modified"},
        416: {"description": "range not satisfiable"},
        **_ERRORS,
    },
)
def download_package(
    filename: str, request: Request, services: ServicesDep, catalog: CatalogDep
) -> Response:
    path = services.packages.resolve(filename)
    try:
        # The stat goes to FileResponse too, so it never stats a file that vanished.
        info = path.stat()
    except FileNotFoundError as e:
        raise PackageNotFound(f"no package named {filename!r}") from e
    if not stat.S_ISREG(info.st_mode):
        raise PackageNotFound(f"no package named {filename!r}")
    release = catalog.by_filename.get(filename)
    if release is not None and release.size == info.st_size:
        etag = f'"{release.sha256}"'
    else:
        etag = f'"{info.st_mtime_ns:x}-{info.st_size:x}"'
    # no-cache: caches may keep the file but must revalidate; a name can be re-published.
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None and _etag_matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    if request.method == "GET":
        DOWNLOADS.inc()  # started; bytes are counted as they go out
    response = _CountedFileResponse(
        Path(path), headers=headers, stat_result=info, filename=filename
    )
    response.file_size = info.st_size
    return response


@router.get(
    "/checksum/{filename}",
    summary="Checksum and signature of a published package",
    description=(
        "`checksum` is the SHA-256 hex of the file; `signature` is the hex RSA PKCS#1 v1.5 "
        "signature (SHA-256) over the ASCII checksum, verifiable with `keys/public.pem`."
    ),
    response_model=ChecksumInfo,
    responses=_ERRORS,
)
def package_checksum(filename: str, catalog: CatalogDep) -> ChecksumInfo:
    check_filename(filename)
    release = catalog.by_filename.get(filename)
    if release is None:
        raise PackageNotFound(f"{filename!r} is not a published release")
    return ChecksumInfo(filename=filename, checksum=release.sha256, signature=release.signature)
