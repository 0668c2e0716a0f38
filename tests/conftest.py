"""Fixtures shared by the whole suite: real brokers on free ports and per-test OTA folders.

- ``mosquitto``: one Mosquitto for the session, from the repo's mosquitto.conf.
- ``fresh_mosquitto``: a Mosquitto of the test's own (for restart/crash tests).
- ``amqtt_broker``: URL of the project's embedded amqtt broker, one per test.
- ``broker_url``: parametrized over both brokers, for tests that must pass on each.
- ``ota_dirs``: keys/packages/data folders with a release key, and ``.settings()``.

Every server is stopped in the fixture's teardown, which pytest runs even when the test
fails; an atexit hook in tests/support/mosquitto.py catches an interrupted session.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# `tests` has no __init__.py, so pytest puts tests/ (not the repo) on sys.path; make
# `tests.support` importable however pytest is started (`pytest`, `python -m pytest`).
_REPO_ROOT = str(Path(__file__).resolve().parents[1])
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from tests.support import (  # noqa: E402
    MosquittoServer,
    OtaDirs,
    ReleaseKeyPems,
    start_amqtt_broker,
    start_mosquitto,
)


@pytest.fixture(autouse=True)
def _no_ota_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's OTA_* variables (say OTA_BROKER_URL) must not change what tests do,
    in this process or in `ota` processes the tests start."""
    for name in list(os.environ):
        if name.startswith("OTA_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoServer]:
    """One real Mosquitto for the session; tests share it, so use unique topics/ids."""
    server = start_mosquitto(tmp_path_factory.mktemp("mosquitto"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fresh_mosquitto(tmp_path: Path) -> Iterator[MosquittoServer]:
    """A Mosquitto owned by this test: stop/restart/kill it freely."""
    server = start_mosquitto(tmp_path / "mosquitto")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def amqtt_broker() -> Iterator[str]:
    """URL (mqtt://127.0.0.1:PORT) of a broker_bridge.embedded.EmbeddedBroker of this test,
    running on its own event loop in a background thread."""
    server = start_amqtt_broker()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(params=["amqtt", "mosquitto"])
def broker_url(request: pytest.FixtureRequest) -> str:
    """Each test using this runs twice: against the embedded amqtt broker and Mosquitto."""
    name = "amqtt_broker" if request.param == "amqtt" else "mosquitto"
    value = request.getfixturevalue(name)
    return value if isinstance(value, str) else value.url


@pytest.fixture(scope="session")
def release_key_pems(tmp_path_factory: pytest.TempPathFactory) -> ReleaseKeyPems:
    return ReleaseKeyPems.generate(tmp_path_factory.mktemp("release-key"))


@pytest.fixture
def ota_dirs(tmp_path: Path, release_key_pems: ReleaseKeyPems) -> OtaDirs:
    """keys_dir (with the session's release key pair), packages_dir and data_dir under
    tmp_path; ``ota_dirs.settings(**overrides)`` builds Settings for them."""
    return OtaDirs.create(tmp_path / "ota", release_key_pems)
