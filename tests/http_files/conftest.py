"""Fixtures for the HTTP side: ``server`` (a running app) and ``start_server(**settings)``."""

from tests.http_files.live_server import server, start_server

__all__ = ["server", "start_server"]
