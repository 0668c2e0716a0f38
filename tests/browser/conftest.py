"""Fixtures for the browser tests: Playwright driving Debian's Chromium, and a running stack.

Never ``playwright install``: the tests use ``/usr/bin/chromium`` and download nothing.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

try:
    from playwright.sync_api import Browser, Playwright, sync_playwright
except ImportError as e:  # fail loudly: a skipped browser suite would hide a broken page
    raise ImportError(
        "the browser tests need the playwright package: .venv/bin/pip install -e '.[dev]'"
    ) from e

from tests.browser.stack import CHROMIUM_ARGS, Stack, chromium_path, running_stack
from tests.http_files.live_server import StartServer, start_server
from tests.support import MosquittoServer, OtaDirs

__all__ = ["browser", "stack", "start_server"]


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    launched = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
    yield launched
    launched.close()


@pytest.fixture
def stack(
    ota_dirs: OtaDirs, mosquitto: MosquittoServer, start_server: StartServer
) -> Iterator[Stack]:
    with running_stack(ota_dirs, mosquitto, start_server) as running:
        yield running
