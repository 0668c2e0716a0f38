"""The download fast path (http_files.fastpath) answers exactly as the FastAPI route.

Two real uvicorn servers over the same services and folder: one with the fast path
in front (as ``ota`` serves), one with FastAPI alone. Every request of a set goes to
both; status, headers (except Date) and body must be equal, and the fast path must
have answered the requests it is meant for itself.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
import requests

from http_files import create_app
from http_files.fastpath import FastDownloads
from ota_core.metrics import DOWNLOAD_BYTES, DOWNLOADS
from tests.http_files.live_server import TIMEOUT, LiveServer, Running, StartServer

CONTENT = bytes(range(256)) * 40  # 10,240 bytes
NAME = "fw-fast-1.0.0.bin"


@pytest.fixture
def pair(start_server: StartServer) -> Iterator[tuple[Running, LiveServer, LiveServer]]:
    """(the fast server's Running, the fast server, a FastAPI-only server), same services."""
    running = start_server()
    running.publish("fast-1", "1.0.0", CONTENT, NAME)
    running.put_file("unpublished.bin", b"not published")
    # Old enough that the catalog snapshot may vouch for it (MTIME_MARGIN).
    old = time.time() - 30
    os.utime(running.dirs.packages_dir / NAME, (old, old))
    plain = LiveServer(create_app(running.services, running.password), fast_downloads=False)
    try:
        yield running, running.server, plain
    finally:
        plain.stop()


def _fast_app(server: LiveServer) -> FastDownloads:
    app = server._server.config.app
    assert isinstance(app, FastDownloads)
    return app


def _ask(running: Running, url: str, method: str, path: str, headers: dict[str, str]) -> tuple:
    running.services.catalog.refresh()  # a fresh snapshot, as a busy server has
    response = requests.request(
        method, url + path, headers=headers, timeout=TIMEOUT, allow_redirects=False
    )
    body = response.content
    kept = sorted((k.lower(), v) for k, v in response.headers.items() if k.lower() != "date")
    _, _, boundary = response.headers.get("content-type", "").partition("boundary=")
    if boundary:  # multipart ranges: a random boundary per response
        body = body.replace(boundary.encode(), b"BOUNDARY")
        kept = [(k, v.replace(boundary, "BOUNDARY")) for k, v in kept]
    return response.status_code, kept, body


FAST = [  # answered by the fast path
    ("GET", {}),
    ("HEAD", {}),
    ("GET", {"Range": "bytes=0-99"}),
    ("GET", {"Range": "bytes=100-"}),
    ("GET", {"Range": "bytes=5-5"}),
    ("GET", {"Range": "bytes=10000-99999"}),
    ("HEAD", {"Range": "bytes=0-9"}),
    ("GET", {"If-None-Match": "SHA"}),
    ("GET", {"If-None-Match": '"other", W/SHA'}),
    ("GET", {"If-None-Match": "*"}),
    ("HEAD", {"If-None-Match": "SHA"}),
    ("GET", {"If-None-Match": '"other"'}),
]
DELEGATED = [  # left to FastAPI by the fast path
    ("GET", {"Range": "bytes=0-9,20-29"}),
    ("GET", {"Range": "bytes=-100"}),
    ("GET", {"Range": "bytes=20-10"}),
    ("GET", {"Range": "bytes=99999-"}),
    ("GET", {"Range": "pages=1-2"}),
    ("GET", {"Range": "bytes = 0-9"}),
    ("GET", {"Range": "bytes=0-9", "If-Range": "SHA"}),
    ("GET", {"Range": "bytes=0-9", "If-Range": '"stale"'}),
]


def _expand(headers: dict[str, str], sha: str) -> dict[str, str]:
    return {k: v.replace("SHA", f'"{sha}"') for k, v in headers.items()}


def test_fast_path_answers_like_the_route(pair: tuple[Running, LiveServer, LiveServer]) -> None:
    running, fast, plain = pair
    sha = running.services.catalog.refresh().by_filename[NAME].sha256
    fast_app = _fast_app(fast)
    for method, headers in FAST + DELEGATED:
        sent = _expand(headers, sha)
        before = fast_app.served
        ours = _ask(running, fast.url, method, f"/packages/{NAME}", sent)
        answered_fast = fast_app.served - before
        theirs = _ask(running, plain.url, method, f"/packages/{NAME}", sent)
        assert ours == theirs, (method, sent)
        assert answered_fast == (1 if (method, headers) in FAST else 0), (method, sent)
    statuses = {
        _ask(running, fast.url, m, f"/packages/{NAME}", _expand(h, sha))[0] for m, h in FAST
    }
    assert statuses == {200, 206, 304}


@pytest.mark.parametrize(
    "path",
    [
        "/packages/unpublished.bin",  # not in the catalog: the route's mtime ETag
        "/packages/nope.bin",
        "/packages/.hidden",
        "/packages/..%2Fkeys%2Fprivate.pem",
        "/packages/a%00b",
        "/packages/",
        "/packages/sub/x.bin",
    ],
)
def test_other_names_are_left_to_the_route(
    pair: tuple[Running, LiveServer, LiveServer], path: str
) -> None:
    running, fast, plain = pair
    fast_app = _fast_app(fast)
    before = fast_app.served
    for method in ("GET", "HEAD"):
        assert _ask(running, fast.url, method, path, {}) == _ask(
            running, plain.url, method, path, {}
        )
    assert fast_app.served == before


def test_a_stale_snapshot_is_left_to_the_route(
    pair: tuple[Running, LiveServer, LiveServer],
) -> None:
    running, fast, _ = pair
    fast_app = _fast_app(fast)
    # A file written just now: the snapshot cannot vouch for it yet.
    os.utime(running.dirs.packages_dir / NAME)
    before = fast_app.served
    response = running.get(f"/packages/{NAME}")
    assert response.status_code == 200 and response.content == CONTENT
    assert fast_app.served == before


def test_fast_path_counts_downloads_and_bytes(
    pair: tuple[Running, LiveServer, LiveServer],
) -> None:
    running, fast, _ = pair
    fast_app = _fast_app(fast)
    downloads, sent = DOWNLOADS._value.get(), DOWNLOAD_BYTES._value.get()
    before = fast_app.served
    for method, headers in (("GET", {}), ("GET", {"Range": "bytes=0-99"}), ("HEAD", {})):
        _ask(running, fast.url, method, f"/packages/{NAME}", headers)
    assert fast_app.served == before + 3
    assert DOWNLOADS._value.get() - downloads == 2
    assert DOWNLOAD_BYTES._value.get() - sent == len(CONTENT) + 100


def test_a_new_version_of_the_file_gets_new_headers(
    pair: tuple[Running, LiveServer, LiveServer],
) -> None:
    running, fast, plain = pair
    path = f"/packages/{NAME}"
    first = _ask(running, fast.url, "GET", path, {})
    later = time.time() - 20  # a new mtime, still old enough for the snapshot
    os.utime(running.dirs.packages_dir / NAME, (later, later))
    second = _ask(running, fast.url, "GET", path, {})
    assert first[1] != second[1]  # Last-Modified moved
    assert second == _ask(running, plain.url, "GET", path, {})
