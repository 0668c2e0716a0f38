"""The embedded amqtt broker of `ota run`: a real listener, plain errors when a port is taken."""

from __future__ import annotations

import asyncio
import logging
import socket
from urllib.parse import urlsplit

import pytest

from broker_bridge.embedded import EmbeddedBroker, broker_config
from ota_core.errors import PortInUse, ServiceUnavailable
from tests.support import MqttProbe, free_port


def test_devices_can_talk_through_it(amqtt_broker: str) -> None:
    with MqttProbe(amqtt_broker) as listener, MqttProbe(amqtt_broker) as talker:
        listener.subscribe("ota/v1/devices/+/announce")
        talker.publish("ota/v1/devices/dev-1/announce", b'{"build_id": "b"}')
        message = listener.expect(10)
        assert message.topic == "ota/v1/devices/dev-1/announce"
        assert message.payload == b'{"build_id": "b"}'


def test_a_taken_port_is_a_plain_error_with_a_way_out(
    amqtt_broker: str, caplog: pytest.LogCaptureFixture
) -> None:
    port = urlsplit(amqtt_broker).port
    assert port is not None
    broker = EmbeddedBroker("127.0.0.1", port)
    with pytest.raises(PortInUse) as caught:
        asyncio.run(broker.start())
    message = caught.value.detail
    assert f"port {port}" in message
    assert "OTA_MQTT_PORT=18830" in message and "--mqtt-port" in message
    assert caught.value.code == "port-in-use"
    assert isinstance(caught.value, ServiceUnavailable)
    assert not any(record.exc_info for record in caplog.records)  # no traceback logged
    asyncio.run(broker.shutdown())  # nothing started: nothing to do, no error


def test_a_port_held_by_any_program_is_refused_the_same_way() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(PortInUse, match=f"port {port}"):
            asyncio.run(EmbeddedBroker("127.0.0.1", port).start())


def test_an_unusable_host_is_a_plain_error() -> None:
    with pytest.raises(ServiceUnavailable, match="not a usable address"):
        asyncio.run(EmbeddedBroker("no-such-host.invalid", free_port()).start())


def test_start_and_shutdown_free_the_port(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    port = free_port()

    async def cycle() -> None:
        broker = EmbeddedBroker("127.0.0.1", port)
        await broker.start()
        await broker.start()  # idempotent
        assert broker.url == f"mqtt://127.0.0.1:{port}"
        await broker.shutdown()
        await broker.shutdown()  # idempotent
        again = EmbeddedBroker("127.0.0.1", port)  # the port is usable again at once
        await again.start()
        await again.shutdown()

    asyncio.run(cycle())
    assert "embedded MQTT broker listening" in caplog.text


def test_config_is_one_plain_tcp_listener_allowing_anonymous_clients() -> None:
    config = broker_config("0.0.0.0", 1883)
    assert config["listeners"] == {"default": {"type": "tcp", "bind": "0.0.0.0:1883"}}
    assert config["plugins"] == {
        "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
    }
    assert broker_config("::", 1883)["listeners"]["default"]["bind"] == "[::]:1883"
    assert EmbeddedBroker("0.0.0.0", 1883).url == "mqtt://127.0.0.1:1883"
