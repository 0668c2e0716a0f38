"""Fixtures for the device client tests: a real signed catalog, real packages over HTTP,
and a responder on the session's Mosquitto that answers like the bridge.

Brokers come from tests/conftest.py (``mosquitto``, ``amqtt_broker``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ota_core.device import DeviceClient, DeviceConfig
from ota_core.signing import ReleaseSigner
from tests.device.harness import TOPIC_PREFIX, DeviceFactory, OfferResponder, PackageServer, World
from tests.support import MosquittoServer, ReleaseKeyPems


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory, release_key_pems: ReleaseKeyPems) -> World:
    signer = ReleaseSigner.from_pem(release_key_pems.private_pem)
    return World.create(signer, tmp_path_factory.mktemp("device-world"))


@pytest.fixture(scope="session")
def http_server(world: World) -> Iterator[PackageServer]:
    server = PackageServer()
    for package in world.packages.values():
        server.add(package.path, package.body)
    server.add("/keys", world.keys_body())  # devices fetch their offer keys from here
    yield server
    server.close()


@pytest.fixture(scope="session")
def mosquitto_responder(mosquitto: MosquittoServer, world: World) -> Iterator[OfferResponder]:
    responder = OfferResponder(mosquitto.url, world.catalog, world.builder, prefix=TOPIC_PREFIX)
    yield responder
    responder.close()


@pytest.fixture
def responder(mosquitto_responder: OfferResponder) -> Iterator[OfferResponder]:
    """The Mosquitto responder, answering by policy again after each test."""
    yield mosquitto_responder
    mosquitto_responder.answer = mosquitto_responder.policy_answer


@pytest.fixture
def device_config(
    mosquitto: MosquittoServer, world: World, http_server: PackageServer, tmp_path: Path
) -> DeviceConfig:
    """A device at build-1001 (1.1.0) on Mosquitto with a unique id and its own install dir;
    it trusts the offer keys the test HTTP server's /keys certifies."""
    return DeviceConfig(
        device_id=f"dev-{uuid.uuid4().hex[:12]}",
        build_id="build-1001",
        version="1.1.0",
        broker_url=mosquitto.url,
        http_base_url=http_server.url,
        public_key_path=world.public_key_path,
        install_dir=tmp_path / "installed",
        topic_prefix=TOPIC_PREFIX,
        timeout=10,
    )


@pytest.fixture
def make_device(device_config: DeviceConfig) -> Iterator[DeviceFactory]:
    """Build (by default connected) devices from ``device_config`` with overrides;
    all are closed at teardown."""
    made: list[DeviceClient] = []

    def make(connect: bool = True, **overrides: Any) -> DeviceClient:
        device = DeviceClient(replace(device_config, **overrides))
        made.append(device)
        if connect:
            device.connect()
        return device

    yield make
    for device in made:
        device.close()
