"""HTTP side: seed-compatible device API, package downloads, admin (see :mod:`admin`)."""

from http_files.app import create_app

__all__ = ["create_app"]
