"""Fixtures shared by the whole suite: real brokers on free ports and per-test OTA folders.

- ``mosquitto``: one Mosquitto for the session, from the repo's mosquitto.conf with the
  test-only relaxation (anonymous clients, no ACL: see tests/support/mosquitto.py).
- ``fresh_mosquitto``: a Mosquitto of the test's own (for restart/crash tests), relaxed too.
- ``secure_mosquitto``: a Mosquitto of the test's own running the repo's mosquitto.conf and
  mosquitto.acl as shipped (no anonymous access, per-device ACL); ``.credentials`` holds
  the users of its generated password file: ``ota-bridge``, ``ota-monitor`` and the
  devices in ``SECURE_TEST_DEVICES``. ``.url_for(user)`` gives a URL with credentials.
- ``dev_ca``: a folder made by scripts/make_dev_ca.py (CA, server and device certificates
  for ``SECURE_TEST_DEVICES``); ``tls_mosquitto``: ``secure_mosquitto`` with the shipped
  TLS listener turned on (``.tls_port``) using those certificates.
- ``amqtt_broker``: URL of the project's embedded amqtt broker, one per test.
- ``broker_url``: parametrized over both brokers, for tests that must pass on each.
- ``ota_dirs``: keys/packages/data folders with a release key, and ``.settings()``.

Every server is stopped in the fixture's teardown, which pytest runs even when the test
fails; an atexit hook in tests/support/mosquitto.py catches an interrupted session.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

# `tests` has no __init__.py, so pytest puts tests/ (not the repo) on sys.path; make
# `tests.support` importable however pytest is started (`pytest`, `python -m pytest`).
_REPO_ROOT = str(Path(__file__).resolve().parents[1])
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from ota_core.mqtt_users import BRIDGE_USER, MONITOR_USER  # noqa: E402
from tests.support import (  # noqa: E402
    REPO_ROOT,
    MosquittoServer,
    OtaDirs,
    ReleaseKeyPems,
    start_amqtt_broker,
    start_mosquitto,
    start_secure_mosquitto,
)
from tests.support.postgres import (  # noqa: E402
    PostgresServer,
    PostgresUnavailable,
    start_postgres,
)

#: Device users (username = device id) in ``secure_mosquitto``'s password file.
SECURE_TEST_DEVICES = ("dev-sec-a", "dev-sec-b", "dev-sec-c")


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


def _secure_users() -> dict[str, str]:
    return {
        name: secrets.token_urlsafe(18)
        for name in (BRIDGE_USER, MONITOR_USER, *SECURE_TEST_DEVICES)
    }


@pytest.fixture
def secure_mosquitto(tmp_path: Path) -> Iterator[MosquittoServer]:
    """The shipped broker configuration, authentication and ACL in force (see above)."""
    server = start_secure_mosquitto(tmp_path / "secure-mosquitto", _secure_users())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def dev_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scripts/make_dev_ca.py's output: ca.crt, server.crt/.key, devices/<id>.crt/.key."""
    folder = tmp_path_factory.mktemp("dev-ca") / "certs"
    devices = [arg for device in SECURE_TEST_DEVICES for arg in ("--device", device)]
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "make_dev_ca.py"), str(folder), *devices],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return folder


@pytest.fixture
def tls_mosquitto(tmp_path: Path, dev_ca: Path) -> Iterator[MosquittoServer]:
    """``secure_mosquitto`` plus the shipped TLS listener (client certificates required)."""
    server = start_secure_mosquitto(tmp_path / "tls-mosquitto", _secure_users(), tls_dir=dev_ca)
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


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL cluster for the session (installed by `make system-deps`).

    Without root (so nothing can be installed) and no PostgreSQL, the tests that need it
    skip with a warning; as root a missing PostgreSQL is a failure.
    """
    try:
        server = start_postgres()
    except PostgresUnavailable as e:
        if os.geteuid() != 0:
            warnings.warn(
                f"SKIPPING PostgreSQL tests (not root, cannot install): {e}", stacklevel=1
            )
            pytest.skip(f"PostgreSQL unavailable without root: {e}")
        raise
    yield server
    server.stop()
