"""Devices on one shared network thread (MqttLoop) and on one shared connection, against
real brokers: connect, protocol fallback, refusals, reconnect after a broker restart."""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from ota_core.device import DeviceClient, DeviceConfig, MqttLoop, OutcomeKind, SharedConnection
from ota_core.topics import TopicKind, TopicScheme
from tests.device.harness import OfferResponder, World
from tests.support import MosquittoServer, add_mosquitto_user, start_mosquitto


@pytest.fixture
def loop() -> Iterator[MqttLoop]:
    shared = MqttLoop(name="test-mqtt-loop")
    yield shared
    shared.stop()


def test_many_devices_install_on_one_loop_thread(
    loop: MqttLoop, device_config: DeviceConfig, responder: OfferResponder, tmp_path: Path
) -> None:
    devices = [
        DeviceClient(
            replace(
                device_config,
                device_id=f"loop-{i}-{uuid.uuid4().hex[:6]}",
                install_dir=tmp_path / f"d{i}",
            ),
            loop=loop,
        )
        for i in range(20)
    ]
    kinds: list[OutcomeKind] = []
    lock = threading.Lock()

    def run(device: DeviceClient) -> None:
        kind = device.run_once().kind
        with lock:
            kinds.append(kind)

    threads = [threading.Thread(target=run, args=(d,)) for d in devices]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert kinds == [OutcomeKind.INSTALLED] * 20
    assert loop.clients == 20
    assert not [t for t in threading.enumerate() if t.name.startswith("paho-mqtt-client-loop-")]
    for device in devices:
        device.close()
    assert loop.clients == 0


def test_loop_falls_back_to_mqtt_311_on_amqtt(
    loop: MqttLoop, amqtt_broker: str, world: World, device_config: DeviceConfig
) -> None:
    responder = OfferResponder(amqtt_broker, world.catalog, world.builder)
    try:
        config = replace(device_config, broker_url=amqtt_broker, topic_prefix="ota/v1")
        with DeviceClient(config, loop=loop) as device:
            assert device.protocol == "3.1.1"
            assert device.run_once().kind is OutcomeKind.INSTALLED
    finally:
        responder.close()


def test_loop_reports_an_unreachable_broker(loop: MqttLoop, device_config: DeviceConfig) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"mqtt://127.0.0.1:{s.getsockname()[1]}"
        outcome = DeviceClient(replace(device_config, broker_url=url), loop=loop).run_once()
    assert outcome.kind is OutcomeKind.CONNECT_FAILED
    assert f"cannot reach the MQTT broker at {url}" in (outcome.detail or "")
    assert loop.clients == 0


def test_loop_reports_refused_credentials(
    loop: MqttLoop, device_config: DeviceConfig, tmp_path: Path
) -> None:
    password_file = tmp_path / "passwd"
    add_mosquitto_user(password_file, device_config.device_id, "right")
    broker = start_mosquitto(
        tmp_path / "locked",
        extra_options=["allow_anonymous false", f"password_file {password_file}"],
    )
    try:
        config = replace(device_config, broker_url=broker.url, timeout=5, mqtt_password="wrong",
                         mqtt_username=device_config.device_id)  # fmt: skip
        outcome = DeviceClient(config, loop=loop).run_once()
        assert outcome.kind is OutcomeKind.CONNECT_FAILED
        assert "refused the connection" in (outcome.detail or "")
        right = replace(config, mqtt_password="right")
        with DeviceClient(right, loop=loop) as device:
            assert device.connected
    finally:
        broker.stop()


def test_loop_reconnects_after_a_broker_restart(
    loop: MqttLoop, fresh_mosquitto: MosquittoServer, world: World, device_config: DeviceConfig
) -> None:
    config = replace(device_config, broker_url=fresh_mosquitto.url, persistent_session=True)
    with DeviceClient(config, loop=loop) as device:
        fresh_mosquitto.restart()
        device.wait_ready(timeout=60)  # paho's backoff starts at 1 s
        responder = OfferResponder(fresh_mosquitto.url, world.catalog, world.builder,
                                   prefix=config.topic_prefix)  # fmt: skip
        try:
            assert device.run_once().kind is OutcomeKind.INSTALLED
        finally:
            responder.close()


def test_shared_connection_serves_many_device_ids(
    device_config: DeviceConfig, responder: OfferResponder, mosquitto: MosquittoServer
) -> None:
    connection = SharedConnection(
        "127.0.0.1",
        mosquitto.port,
        topic_filter=TopicScheme(device_config.topic_prefix).filter(TopicKind.OFFER),
    )
    devices = [
        DeviceClient(
            replace(device_config, device_id=f"mux-{i}-{uuid.uuid4().hex[:6]}", download=False),
            connection=connection,
        )
        for i in range(5)
    ]
    try:
        for device in devices:
            assert device.run_once().kind is OutcomeKind.INSTALLED
            assert device.paho_client is connection.client
    finally:
        for device in devices:
            device.close()
        connection.close()
