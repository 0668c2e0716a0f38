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

import os
import stat
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.types import Message, Receive, Scope, Send

from http_files.deps import CatalogDep, ServicesDep
from http_files.schemas import ChecksumInfo, ErrorBody
from ota_core.catalog import Catalog
from ota_core.errors import PackageNotFound
from ota_core.identifiers import check_filename
from ota_core.metrics import DOWNLOAD_BYTES, DOWNLOADS
from ota_core.models import Release
from ota_core.services import Services

router = APIRouter(tags=["packages"])

_ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorBody, "description": "not a plain package file name"},
    404: {"model": ErrorBody, "description": "no such package"},
}


class _CountedFileResponse(FileResponse):
    """A FileResponse that counts the bytes it actually sends (Range-aware: only the
    requested slices pass through ``send``) and sends single ranges zero-copy.

    Under ``ota``'s uvicorn (:mod:`http_files.server`) a whole file goes out as ASGI
    ``http.response.pathsend`` (Starlette does that by itself) and a single range as
    ``http.response.zerocopysend``: both are ``sendfile`` from the page cache, no
    chunk passes through Python. Other servers get Starlette's chunked reads.
    """

    file_size = 0
    _zero_copy = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._zero_copy = "http.response.zerocopysend" in scope.get("extensions", {})

        async def counting_send(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.body":
                DOWNLOAD_BYTES.inc(len(message.get("body", b"")))
            elif kind == "http.response.pathsend":
                # A server doing the send itself (ASGI pathsend): the whole file goes.
                DOWNLOAD_BYTES.inc(self.file_size)
            elif kind == "http.response.zerocopysend":
                DOWNLOAD_BYTES.inc(message["count"])
            await send(message)

        await super().__call__(scope, receive, counting_send)

    async def _handle_single_range(
        self, send: Send, start: int, end: int, file_size: int, send_header_only: bool
    ) -> None:
        if not self._zero_copy or send_header_only:
            await super()._handle_single_range(send, start, end, file_size, send_header_only)
            return
        headers = MutableHeaders(raw=list(self.raw_headers))
        headers["content-range"] = f"bytes {start}-{end - 1}/{file_size}"
        headers["content-length"] = str(end - start)
        await send({"type": "http.response.start", "status": 206, "headers": headers.raw})
        with open(self.path, "rb") as file:  # a local file: opening does not wait on I/O
            await send(
                {
                    "type": "http.response.zerocopysend",
                    "file": file,
                    "offset": start,
                    "count": end - start,
                    "more_body": False,
                }
            )


#: How old a catalog snapshot a download may trust without a database round trip.
SNAPSHOT_MAX_AGE = 1.0
#: ... provided the file is older than the snapshot's check by this much (file
#: timestamps come from a coarse clock that can lag time.time() a little).
MTIME_MARGIN = 1.0


def recent_release(services: Services, filename: str, info: os.stat_result) -> Release | None:
    """The published release this file is (for its ETag, its SHA-256) if the catalog
    snapshot can tell without the database; None: ask the database.

    Downloads are the hot path: a revision SELECT per request cost about a quarter of
    the HTTP side's CPU at ~900 downloads/s. So a snapshot checked against the
    database less than :data:`SNAPSHOT_MAX_AGE` ago is trusted when it already has
    this file at this size and the file has not been written since that check: the
    SHA-256 it holds is then still the file's. Anything else (an unknown name, a new
    size, a fresh file) asks the database, as every other route does.
    """
    recent = services.catalog.checked_within(SNAPSHOT_MAX_AGE)
    if recent is not None:
        catalog, checked_wall = recent
        release = catalog.by_filename.get(filename)
        if (
            release is not None
            and release.size == info.st_size
            and info.st_mtime < checked_wall - MTIME_MARGIN
        ):
            return release
    return None


def _published(catalog: Catalog, filename: str, info: os.stat_result) -> Release | None:
    release = catalog.by_filename.get(filename)
    return release if release is not None and release.size == info.st_size else None


def etag_matches(if_none_match: str, etag: str) -> bool:
    # Weak comparison, as RFC 9110 requires for If-None-Match.
    candidates = [c.strip() for c in if_none_match.split(",")]
    return any(c == "*" or c.removeprefix("W/") == etag for c in candidates)


def route_headers(etag: str) -> dict[str, str]:
    """The headers a download adds to Starlette's (shared with :mod:`http_files.fastpath`)."""
    # no-cache: caches may keep the file but must revalidate; a name can be re-published.
    return {"ETag": etag, "Cache-Control": "no-cache"}


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
async def download_package(filename: str, request: Request, services: ServicesDep) -> Response:
    # async, unlike the other routes: the hot path is an lstat and a stat of a local
    # file (microseconds) and the file itself goes out by sendfile, so a worker thread
    # per download (and the GIL hand-offs it costs) buys nothing. The database, when
    # the catalog snapshot will not do, is still asked from the threadpool.
    path = services.packages.resolve(filename)
    try:
        # The stat goes to FileResponse too, so it never stats a file that vanished.
        info = path.stat()
    except FileNotFoundError as e:
        raise PackageNotFound(f"no package named {filename!r}") from e
    if not stat.S_ISREG(info.st_mode):
        raise PackageNotFound(f"no package named {filename!r}")
    release = recent_release(services, filename, info)
    if release is None:
        catalog = await run_in_threadpool(services.catalog.refresh)
        release = _published(catalog, filename, info)
    if release is not None:
        etag = f'"{release.sha256}"'
    else:
        etag = f'"{info.st_mtime_ns:x}-{info.st_size:x}"'
    headers = route_headers(etag)
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None and etag_matches(if_none_match, etag):
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
