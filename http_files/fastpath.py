"""The download fast path: ``GET``/``HEAD /packages/{filename}`` without FastAPI.

At a few thousand downloads a second the Python around each ``sendfile`` is the
HTTP side's limit, and about half of it was FastAPI/Starlette's middleware stack,
routing and dependency injection. :class:`FastDownloads` is a plain ASGI wrapper in
front of the app that answers the common download requests itself and hands
*everything else* to the app unchanged:

* it answers only a name that :meth:`~ota_core.package_files.PackageFolder.resolve`
  accepts, of a regular file whose published release the recent catalog snapshot
  already vouches for (:func:`http_files.packages.recent_release`), with no
  ``If-Range`` and at most one plain ``Range: bytes=a-b`` / ``bytes=a-`` that the
  file satisfies;
* and only under a server offering ASGI ``http.response.zerocopysend`` (``ota``'s
  uvicorn, :mod:`http_files.server`): the body goes out by ``sendfile``.

Every other request — errors (400, 404, 416), unpublished files, a snapshot too
old, multiple ranges, ``If-Range``, other servers — takes the FastAPI route in
:mod:`http_files.packages`, which stays the definition of the contract. The
answers here are built from that route's own response objects (a
:class:`~starlette.responses.FileResponse` with the route's headers, and the
route's 304), cached per file and keyed by inode, mtime, size and ETag, so the
status lines and headers are the route's byte for byte (tests compare both paths).
The download counters of :mod:`ota_core.metrics` are counted the same way.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Response
from starlette.responses import FileResponse
from starlette.types import Receive, Scope, Send

from http_files.packages import etag_matches, recent_release, route_headers
from ota_core.errors import OtaError
from ota_core.metrics import DOWNLOAD_BYTES, DOWNLOADS

PREFIX = "/packages/"
ZERO_COPY = "http.response.zerocopysend"
#: One satisfiable-looking range in its plain form; anything else goes to FastAPI.
_RANGE = re.compile(r"bytes=(\d+)-(\d*)", re.ASCII)
#: Files whose prepared headers are kept (one entry per name; a new version replaces it).
MAX_CACHED = 256

Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True)
class _Prepared:
    """The route's answers for one version of one file."""

    key: tuple[int, int, int, str]  # inode, mtime_ns, size, etag
    etag: str
    full: Headers  # 200
    not_modified: Headers  # 304
    length_at: int  # index of content-length in ``full`` (206 replaces it in place)


def _prepare(path: Path, filename: str, info: os.stat_result, etag: str) -> _Prepared:
    headers = route_headers(etag)
    full = FileResponse(path, headers=headers, stat_result=info, filename=filename).raw_headers
    not_modified = Response(status_code=304, headers=headers).raw_headers
    length_at = [name for name, _ in full].index(b"content-length")
    key = (info.st_ino, info.st_mtime_ns, info.st_size, etag)
    return _Prepared(key, etag, full, not_modified, length_at)


class FastDownloads:
    """ASGI app: serves the plain package downloads of ``app`` itself (see the module)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self._prepared: dict[str, _Prepared] = {}
        #: Requests answered here rather than by the app (tests look).
        self.served = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or not scope["path"].startswith(PREFIX)
            or scope["method"] not in ("GET", "HEAD")
            or scope.get("root_path")
            or ZERO_COPY not in scope.get("extensions", {})
            or not await self._serve(scope, send)
        ):
            await self.app(scope, receive, send)

    async def _serve(self, scope: Scope, send: Send) -> bool:
        """Answer the request and return True, or return False having sent nothing."""
        filename: str = scope["path"][len(PREFIX) :]
        if not filename or "/" in filename:
            return False
        services = self.app.state.services
        try:
            path = services.packages.resolve(filename)
            info = os.stat(path)
        except (OtaError, OSError):
            return False
        if not stat.S_ISREG(info.st_mode):
            return False
        release = recent_release(services, filename, info)
        if release is None:
            return False  # unpublished, or the snapshot needs the database: the route asks it
        http_range = if_none_match = None
        for name, value in scope["headers"]:
            if name == b"range":
                if http_range is not None:
                    return False
                http_range = value.decode("latin-1")
            elif name == b"if-none-match":
                if if_none_match is not None:
                    return False
                if_none_match = value.decode("latin-1")
            elif name == b"if-range":
                return False
        etag = f'"{release.sha256}"'
        prepared = self._prepared.get(filename)
        if prepared is None or prepared.key != (
            info.st_ino,
            info.st_mtime_ns,
            info.st_size,
            etag,
        ):
            prepared = _prepare(path, filename, info, etag)
            if len(self._prepared) >= MAX_CACHED:
                self._prepared.clear()
            self._prepared[filename] = prepared
        if if_none_match is not None and etag_matches(if_none_match, etag):
            self.served += 1
            await send(
                {"type": "http.response.start", "status": 304, "headers": prepared.not_modified}
            )
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return True
        size = info.st_size
        start, end, status, headers = 0, size, 200, prepared.full
        if http_range is not None:
            match = _RANGE.fullmatch(http_range.strip())
            if match is None:
                return False
            start = int(match[1])
            if match[2]:
                last = int(match[2])
                if last < start:
                    return False
                end = min(last + 1, size)
            if start >= size:
                return False  # 416 from the route
            status = 206
            headers = list(prepared.full)
            headers[prepared.length_at] = (b"content-length", str(end - start).encode())
            headers.append((b"content-range", f"bytes {start}-{end - 1}/{size}".encode()))
        head_only = scope["method"] == "HEAD"
        if head_only:
            self.served += 1
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return True
        try:
            file = open(path, "rb")  # noqa: SIM115 -- a local file: opening does not wait on I/O
        except OSError:
            return False  # gone since the stat: the route says 404
        with file:
            self.served += 1
            DOWNLOADS.inc()
            await send({"type": "http.response.start", "status": status, "headers": headers})
            DOWNLOAD_BYTES.inc(end - start)
            await send(
                {
                    "type": ZERO_COPY,
                    "file": file,
                    "offset": start,
                    "count": end - start,
                    "more_body": False,
                }
            )
        return True
