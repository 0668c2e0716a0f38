"""A real running stack for the browser tests, and simulated devices the test can steer.

* :func:`chromium_path`: Debian's Chromium (``apt-get install chromium``). Missing, the
  tests fail with that instruction: CI installs it, and a browser test that skips
  silently would hide that the admin page was never driven.
* :class:`Stack`: the HTTP side (uvicorn on a real socket), a real bridge (paho-mqtt,
  push worker and rollout supervisor) on the session's Mosquitto, each with its own
  :class:`~ota_core.services.Services` — two database connections, as ``ota http``
  and ``ota bridge`` would be.
* :class:`SimDevices`: reference clients (:class:`~ota_core.device.DeviceClient`)
  that announce once, then install what is pushed to them, each offer through the
  full check chain and a real download. Installs of healthy devices wait at a gate
  the test opens (so the page can be seen with devices *installing*); devices picked
  to fail report ``failed`` as a bad install would.
"""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from broker_bridge.bridge import Bridge
from ota_core.device import DeviceClient, DeviceConfig
from ota_core.device.client import InstallFailed
from ota_core.keyfiles import ensure_offer_key, load_signer
from ota_core.models import ReleaseManifest, StatusReport, UpdateOffer
from ota_core.rollouts import cohort_bucket
from ota_core.services import Services
from ota_core.settings import Settings
from tests.http_files.live_server import Running, StartServer
from tests.support import MosquittoServer, OtaDirs

WAIT = 30.0
CHROMIUM = "/usr/bin/chromium"
#: This machine's network is closed: without these Chromium keeps trying to phone home.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    path = shutil.which(CHROMIUM)
    if path is None:
        pytest.fail(
            f"Chromium is not installed at {CHROMIUM}. The browser tests drive Debian's "
            "Chromium and never download one: run `apt-get install -y chromium` "
            "(`make system-deps` does).",
            pytrace=False,
        )
    return path


@dataclass
class Stack:
    server: Running
    bridge: Bridge
    bridge_services: Services
    settings: Settings
    broker_url: str

    @property
    def url(self) -> str:
        return self.server.url


@contextmanager
def running_stack(
    ota_dirs: OtaDirs, mosquitto: MosquittoServer, start_server: StartServer
) -> Iterator[Stack]:
    overrides: dict[str, Any] = {
        "broker_url": mosquitto.url,
        "mqtt_protocol": "5",
        # Its own prefix and client id: other suites share the session's Mosquitto.
        "topic_prefix": f"browser-{uuid.uuid4().hex[:8]}/ota/v1",
        "mqtt_client_id": f"bridge-{uuid.uuid4().hex[:8]}",
        "catalog_poll_seconds": 0.1,
        "rollout_check_seconds": 0.2,
    }
    # Sealed, device-bound offers, as `ota keygen` sets up.
    ensure_offer_key(ota_dirs.keys_dir, load_signer(ota_dirs.keys_dir))
    server = start_server(**overrides)
    settings = ota_dirs.settings(**overrides)
    services = Services.from_settings(settings)
    bridge = Bridge(settings, services)
    try:
        bridge.start()
        assert bridge.wait_ready(WAIT), f"bridge never subscribed on {mosquitto.url}"
        yield Stack(server, bridge, services, settings, mosquitto.url)
    finally:
        bridge.stop()
        services.close()


def pick_devices(
    build_id: str, prefix: str, bands: Iterable[tuple[float, float, int]]
) -> list[list[str]]:
    """Device ids whose rollout cohort for ``build_id`` falls in each band.

    A band ``(low, high, count)`` asks for ``count`` ids reached when a stage goes
    from ``low`` % to ``high`` % (cohort buckets in ``[low, high)`` hundredths).
    """
    wanted = list(bands)
    found: list[list[str]] = [[] for _ in wanted]
    for n in range(100_000):
        name = f"{prefix}-{n:04d}"
        bucket = cohort_bucket(build_id, name)
        for i, (low, high, count) in enumerate(wanted):
            if low * 100 <= bucket < high * 100 and len(found[i]) < count:
                found[i].append(name)
        if all(len(f) == w[2] for f, w in zip(found, wanted, strict=True)):
            return found
    raise AssertionError("not enough device ids in the bands")


class SimDevices:
    """Reference clients on the stack's broker, installing what is pushed to them."""

    def __init__(
        self,
        stack: Stack,
        public_key: Path,
        device_ids: Iterable[str],
        failing: Iterable[str] = (),
        *,
        build_id: str = "build-1000",
        version: str = "1.0.0",
        hardware: str = "pump-v2",
        channel: str = "stable",
    ) -> None:
        self.gate = threading.Event()  # healthy installs wait here until the test opens it
        self.failing = frozenset(failing)
        self._pool = ThreadPoolExecutor(8, thread_name_prefix="sim-device")
        self._errors: list[BaseException] = []
        self.clients: dict[str, DeviceClient] = {}
        self.sent: dict[str, list[str]] = {}  # status reports per device, for diagnostics
        for device_id in device_ids:
            config = DeviceConfig(
                device_id=device_id,
                build_id=build_id,
                version=version,
                hardware=hardware,
                channel=channel,
                broker_url=stack.broker_url,
                http_base_url=stack.url,
                public_key_path=public_key,
                topic_prefix=stack.settings.topic_prefix,
                persistent_session=True,
                store_packages=False,
                persist_state=False,
                timeout=WAIT,
            )
            self.clients[device_id] = DeviceClient(
                config,
                on_push=self._on_push(device_id),
                on_status=self._on_status(device_id),
                installer=self._installer(device_id),
            )

    def _on_push(self, device_id: str) -> Callable[[UpdateOffer], None]:
        def pushed(offer: UpdateOffer) -> None:
            # Called on the MQTT thread, which must not block: install on a worker.
            self._pool.submit(self._install, device_id, offer)

        return pushed

    def _on_status(self, device_id: str) -> Callable[[StatusReport], None]:
        def sent(status: StatusReport) -> None:
            self.sent.setdefault(device_id, []).append(
                f"{status.state.value}:{status.build_id}:{status.detail or ''}"
            )

        return sent

    def _install(self, device_id: str, offer: UpdateOffer) -> None:
        try:
            self.clients[device_id].handle_push(offer)
        except BaseException as e:  # surfaced by check(), not lost in the pool
            self._errors.append(e)

    def _installer(self, device_id: str) -> Callable[[ReleaseManifest, Path | None], None]:
        def install(manifest: ReleaseManifest, path: Path | None) -> None:
            if device_id in self.failing:
                raise InstallFailed("injected: flash write failed")
            if not self.gate.wait(WAIT * 2):
                raise InstallFailed("the test never opened the install gate")

        return install

    def start(self) -> None:
        """Connect every device and announce once, so the bridge knows it (and pushes)."""
        list(self._pool.map(self._connect, self.clients.values()))

    @staticmethod
    def _connect(client: DeviceClient) -> None:
        client.connect()
        client.run_once()

    def describe(self) -> str:
        """What each device runs and reported, for a failure message."""
        return "; ".join(
            f"{device_id}: runs {client.build_id}, sent {self.sent.get(device_id, [])}"
            for device_id, client in self.clients.items()
        )

    def check(self) -> None:
        if self._errors:
            raise AssertionError(f"a simulated device crashed: {self._errors[0]!r}")

    def close(self) -> None:
        self.gate.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        for client in self.clients.values():
            client.close()


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
