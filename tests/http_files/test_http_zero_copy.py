"""Zero-copy package sends: whole files and single ranges leave through sendfile.

``ota``'s uvicorn protocol (:mod:`http_files.server`) advertises the ASGI
``http.response.pathsend`` and ``http.response.zerocopysend`` extensions; the
package route uses them. These tests record which ASGI messages the app sent
on a real socket, check every byte that arrives, and check the fallback (no
extension: Starlette's chunked reads) gives the same bytes.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from collections.abc import Iterator

import anyio
import httpx
import pytest
import requests
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from http_files import create_app
from ota_core.services import Services
from tests.http_files.live_server import LiveServer
from tests.support import OtaDirs

# Larger than the socket buffers, odd-sized: sendfile needs several rounds.
CONTENT = os.urandom(3 * 1024 * 1024 + 123)
SIZE = len(CONTENT)
NAME = "fw-big.bin"


class Recorder:
    """The app, noting the type of every message it sends."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.kinds: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def recording_send(message: Message) -> None:
            self.kinds.append(message["type"])
            await send(message)

        await self.app(scope, receive, recording_send)


@pytest.fixture
def services(ota_dirs: OtaDirs) -> Iterator[Services]:
    (ota_dirs.packages_dir / NAME).write_bytes(CONTENT)
    services = Services.from_settings(ota_dirs.settings())
    yield services
    services.close()


@pytest.fixture
def recorded(services: Services, ota_dirs: OtaDirs) -> Iterator[tuple[LiveServer, Recorder]]:
    recorder = Recorder(create_app(services, ota_dirs.admin_password))
    server = LiveServer(recorder)
    yield server, recorder
    server.stop()


def test_whole_file_goes_out_as_pathsend(recorded: tuple[LiveServer, Recorder]) -> None:
    server, recorder = recorded
    response = requests.get(f"{server.url}/packages/{NAME}", timeout=30)
    assert response.status_code == 200
    assert response.headers["Content-Length"] == str(SIZE)
    assert hashlib.sha256(response.content).digest() == hashlib.sha256(CONTENT).digest()
    assert recorder.kinds == ["http.response.start", "http.response.pathsend"]


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=1000-2000999", 1000, 2001000),
        ("bytes=-70000", SIZE - 70000, SIZE),
        ("bytes=5-", 5, SIZE),
    ],
)
def test_single_range_goes_out_as_zerocopysend(
    recorded: tuple[LiveServer, Recorder], header: str, start: int, end: int
) -> None:
    server, recorder = recorded
    response = requests.get(f"{server.url}/packages/{NAME}", headers={"Range": header}, timeout=30)
    assert response.status_code == 206
    assert response.headers["Content-Range"] == f"bytes {start}-{end - 1}/{SIZE}"
    assert response.content == CONTENT[start:end]
    assert recorder.kinds == ["http.response.start", "http.response.zerocopysend"]


def test_multiple_ranges_still_stream_through_starlette(
    recorded: tuple[LiveServer, Recorder],
) -> None:
    server, recorder = recorded
    response = requests.get(
        f"{server.url}/packages/{NAME}", headers={"Range": "bytes=0-9,2000000-2000009"}, timeout=30
    )
    assert response.status_code == 206
    assert response.headers["Content-Type"].startswith("multipart/byteranges")
    assert CONTENT[:10] in response.content and CONTENT[2000000:2000010] in response.content
    assert "http.response.zerocopysend" not in recorder.kinds


def test_keep_alive_connection_serves_files_back_to_back(
    recorded: tuple[LiveServer, Recorder],
) -> None:
    server, _ = recorded
    with requests.Session() as session:
        for header in ({}, {"Range": "bytes=10-99"}, {}, {"Range": "bytes=-1"}):
            response = session.get(f"{server.url}/packages/{NAME}", headers=header, timeout=30)
            expected = {(): CONTENT, ("bytes=10-99",): CONTENT[10:100], ("bytes=-1",): CONTENT[-1:]}
            assert response.content == expected[tuple(header.values())]


def test_clients_leaving_mid_file_leave_the_server_serving(
    recorded: tuple[LiveServer, Recorder],
) -> None:
    server, _ = recorded
    for header in ("", f"Range: bytes=0-{SIZE - 2}\r\n"):
        for _ in range(5):
            with socket.create_connection((server.host, server.port), timeout=30) as sock:
                sock.sendall(f"GET /packages/{NAME} HTTP/1.1\r\nHost: x\r\n{header}\r\n".encode())
                assert sock.recv(4096).startswith(b"HTTP/1.1 20")
    response = requests.get(f"{server.url}/packages/{NAME}", timeout=30)
    assert response.content == CONTENT


def test_servers_without_the_extensions_get_the_same_bytes(
    services: Services, ota_dirs: OtaDirs
) -> None:
    # httpx's ASGI transport advertises no zero-copy extension: chunked reads.
    recorder = Recorder(create_app(services, ota_dirs.admin_password))

    async def fetch() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=recorder)
        async with httpx.AsyncClient(transport=transport, base_url="http://ota") as client:
            return (
                await client.get(f"/packages/{NAME}"),
                await client.get(f"/packages/{NAME}", headers={"Range": "bytes=100-1999999"}),
            )

    # Its own thread: another test's event loop may still be set on this one.
    results: list[tuple[httpx.Response, httpx.Response]] = []
    worker = threading.Thread(target=lambda: results.append(anyio.run(fetch)))
    worker.start()
    worker.join(60)
    ((whole, part),) = results
    assert whole.content == CONTENT
    assert part.status_code == 206 and part.content == CONTENT[100:2000000]
    assert "http.response.pathsend" not in recorder.kinds
    assert "http.response.zerocopysend" not in recorder.kinds
