"""Fixtures for the admin tests: the same running server as tests/http_files uses."""

from tests.http_files.live_server import server, start_server

__all__ = ["server", "start_server"]
