"""A blocking paho-mqtt client for tests: subscribe, publish, wait for messages."""

from __future__ import annotations

import queue
import ssl
import threading
import time
import uuid
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion


class MqttProbe:
    """Connects on construction (raises if the broker does not accept it) and collects the
    messages of its subscriptions in a queue. MQTT 3.1.1 by default: amqtt speaks only that.
    ``clean_session=False`` with a fixed ``client_id`` makes a persistent session.
    """

    def __init__(
        self,
        url: str,
        *,
        client_id: str | None = None,
        protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv311,
        username: str | None = None,
        password: str | None = None,
        clean_session: bool = True,
        timeout: float = 10.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.hostname is None:
            raise ValueError(f"not an MQTT URL: {url}")
        self.url = url
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._acked: set[int] = set()
        self._acks = threading.Condition()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"probe-{uuid.uuid4().hex[:12]}",
            protocol=protocol,
            # MQTT 5 has clean_start at connect() instead; paho refuses this argument there.
            clean_session=None if protocol == MQTTProtocolVersion.MQTTv5 else clean_session,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        if tls is not None:  # e.g. a client certificate for the 8883 listener
            self.client.tls_set_context(tls)
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        if protocol == MQTTProtocolVersion.MQTTv5:
            self.client.connect(
                parts.hostname, parts.port or 1883, keepalive=30, clean_start=clean_session
            )
        else:
            self.client.connect(parts.hostname, parts.port or 1883, keepalive=30)
        self.client.loop_start()
        deadline = time.monotonic() + timeout
        while not self.client.is_connected():
            if time.monotonic() > deadline:
                self.close()
                raise ConnectionError(f"MQTT connection to {url} not accepted within {timeout}s")
            time.sleep(0.02)

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.messages.put(message)

    def _on_subscribe(self, _client: mqtt.Client, _userdata: Any, mid: int, *_rest: Any) -> None:
        with self._acks:
            self._acked.add(mid)
            self._acks.notify_all()

    def subscribe(self, topic: str, qos: int = 1, timeout: float = 10.0) -> None:
        """Subscribe and wait for the SUBACK, so a publish right after it is not missed."""
        result, mid = self.client.subscribe(topic, qos)
        if result != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"subscribe to {topic} failed: {mqtt.error_string(result)}")
        with self._acks:
            if not self._acks.wait_for(lambda: mid in self._acked, timeout):
                raise TimeoutError(f"no SUBACK for {topic} within {timeout}s")

    def publish(
        self, topic: str, payload: bytes | str, qos: int = 1, timeout: float = 10.0
    ) -> None:
        """Publish and, for QoS 1/2, wait until the broker acknowledged it."""
        info = self.client.publish(topic, payload, qos=qos)
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise TimeoutError(f"publish to {topic} not acknowledged within {timeout}s")

    def expect(self, timeout: float = 10.0) -> mqtt.MQTTMessage:
        """The next message on any subscription; raises ``TimeoutError`` if none arrives."""
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no MQTT message within {timeout}s on {self.url}") from None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def publish_nowait(self, topic: str, payload: bytes | str, qos: int = 0) -> None:
        """Hand a message to paho without waiting (e.g. one the broker will refuse)."""
        self.client.publish(topic, payload, qos=qos)

    def __enter__(self) -> MqttProbe:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def connack(
    url: str,
    *,
    username: str | None = None,
    password: str | None = None,
    protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv311,
    client_id: str | None = None,
    tls: ssl.SSLContext | None = None,
    timeout: float = 10.0,
) -> str:
    """Connect once (no retries) and return how the broker answered: ``"Success"``, the
    CONNACK's refusal (``"Not authorized"``...), or ``"no CONNACK"`` when the connection
    closed (or the TLS handshake failed) without one. Disconnects afterwards."""
    parts = urlsplit(url)
    if parts.hostname is None:
        raise ValueError(f"not an MQTT URL: {url}")
    answered = threading.Event()
    outcome: list[str] = []

    def on_connect(_c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        outcome.append(str(reason))
        answered.set()

    def on_disconnect(_c: mqtt.Client, _u: Any, *_rest: Any) -> None:
        answered.set()

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id or f"connack-{uuid.uuid4().hex[:12]}",
        protocol=protocol,
    )
    if username is not None:
        client.username_pw_set(username, password)
    if tls is not None:
        client.tls_set_context(tls)
    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    try:
        client.connect(parts.hostname, parts.port or 1883, keepalive=30)
    except (OSError, ssl.SSLError) as e:
        return f"no CONNACK ({type(e).__name__})"
    # Driven by hand rather than loop_start(): no background thread, so no automatic
    # reconnect after a refusal and nothing to wait for when it is over.
    deadline = time.monotonic() + timeout
    try:
        while not answered.is_set() and time.monotonic() < deadline:
            if client.loop(timeout=0.05) not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_AGAIN):
                break
    except (OSError, ssl.SSLError):
        pass
    finally:
        client.disconnect()
    return outcome[0] if outcome else "no CONNACK"
