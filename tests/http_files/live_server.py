"""The HTTP side on a real socket: uvicorn in a background thread, plus small clients.

Imported by the conftests of tests/http_files and tests/admin as
``tests.http_files.live_server`` (tests/conftest.py puts the repo root on sys.path).
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import uvicorn
from starlette.types import ASGIApp

from http_files import create_app
from http_files.server import uvicorn_config
from ota_core.services import Services
from tests.support import OtaDirs

TIMEOUT = 30.0


class LiveServer:
    """uvicorn serving ``app`` on a socket bound here (port 0: no race for a free port)."""

    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", fast_downloads: bool = True) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, 0))
        self.host = host
        self.port: int = self._socket.getsockname()[1]
        # The product's own uvicorn settings (zero-copy file sends included).
        config = uvicorn_config(
            app, fast_downloads=fast_downloads, log_level="warning", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._socket]},
            daemon=True,
            name=f"uvicorn-{self.port}",
        )
        self._thread.start()
        deadline = time.monotonic() + TIMEOUT
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("uvicorn exited before it started; see the log above")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"uvicorn did not start within {TIMEOUT:.0f}s")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(TIMEOUT)
        self._socket.close()


@dataclass
class Running:
    """A started HTTP side: its URL, its services and folders, and request helpers."""

    server: LiveServer
    services: Services
    dirs: OtaDirs
    password: str
    admin: requests.Session = field(init=False)

    def __post_init__(self) -> None:
        self.admin = requests.Session()
        self.admin.auth = ("admin", self.password)

    @property
    def url(self) -> str:
        return self.server.url

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", TIMEOUT)
        return requests.get(self.url + path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", TIMEOUT)
        return requests.post(self.url + path, **kwargs)

    def admin_call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", TIMEOUT)
        return self.admin.request(method, self.url + path, **kwargs)

    def put_file(self, name: str, content: bytes) -> Path:
        """Place a file in packages/ directly, as an operator copying it there would."""
        path = self.dirs.packages_dir / name
        path.write_bytes(content)
        return path

    def upload(
        self, build_id: str, version: str, content: bytes, filename: str, **fields: str
    ) -> requests.Response:
        """Publish through the admin API's upload endpoint."""
        return self.admin_call(
            "POST",
            "/admin/api/releases",
            files={"file": (filename, content, "application/zip")},
            data={"build_id": build_id, "version": version, **fields},
        )

    def publish(
        self,
        build_id: str,
        version: str,
        content: bytes,
        filename: str | None = None,
        **fields: str,
    ) -> dict[str, Any]:
        response = self.upload(
            build_id, version, content, filename or f"ota-{version}.zip", **fields
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        assert body["sha256"] == hashlib.sha256(content).hexdigest()
        return body


StartServer = Callable[..., Running]


def start_server_factory(ota_dirs: OtaDirs) -> Iterator[StartServer]:
    """Yield ``start(**settings_overrides) -> Running``; everything started is stopped after."""
    started: list[tuple[LiveServer, Services]] = []

    def start(**overrides: Any) -> Running:
        services = Services.from_settings(ota_dirs.settings(**overrides))
        try:
            server = LiveServer(create_app(services, ota_dirs.admin_password))
        except BaseException:
            services.close()
            raise
        started.append((server, services))
        return Running(server, services, ota_dirs, ota_dirs.admin_password)

    yield start
    for server, services in reversed(started):
        server.stop()
        services.close()


@pytest.fixture
def start_server(ota_dirs: OtaDirs) -> Iterator[StartServer]:
    yield from start_server_factory(ota_dirs)


@pytest.fixture
def server(start_server: StartServer) -> Running:
    return start_server()
