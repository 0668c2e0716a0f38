"""Reliability with real processes: Mosquitto restarted mid-run, the `ota bridge` process
killed with SIGKILL, duplicate deliveries, a device flooding its topics, and hostile ids.

Every wait has a generous timeout; nothing asserts on speed. Where a count depends on
time (the rate limiter), the bound is computed from time measured *around* the work, so
a slow machine only makes it looser.
"""

from __future__ import annotations

import json
import socket
import struct
import time
import uuid
from typing import Any

import pytest
from paho.mqtt.enums import MQTTProtocolVersion

from ota_core.keyfiles import ensure_offer_key, load_signer
from ota_core.models import ErrorReply, UpdateOffer, UpToDate
from ota_core.services import Services
from tests.broker_bridge.peers import (
    WAIT,
    FakeDevice,
    add_release,
    bridge_settings,
    running_bridge,
)
from tests.e2e.processes import OtaProcess, ota_env
from tests.support import MosquittoServer, MqttProbe

#: paho's reconnect backoff tops out at 30 s; waits across a broker restart allow for it.
RECONNECT_WAIT = WAIT + 30


def wait_until(condition: Any, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def offers_answering(
    probe: MqttProbe, wanted: set[str], timeout: float
) -> dict[str, dict[str, Any]]:
    """Offers received by ``probe`` until every request id in ``wanted`` is answered."""
    found: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while not wanted <= set(found):
        message = probe.expect(max(0.1, deadline - time.monotonic()))
        offer = json.loads(message.payload)
        found[offer.get("request_id")] = offer
    return found


# -- broker and bridge restarts ---------------------------------------------------------


def test_every_device_gets_its_offer_across_a_mosquitto_restart(
    ota_dirs: Any, fresh_mosquitto: MosquittoServer
) -> None:
    settings = bridge_settings(ota_dirs, fresh_mosquitto.url, "5")
    run = uuid.uuid4().hex[:8]
    with running_bridge(settings) as (bridge, services):
        add_release(services, "b2", "2.0.0")
        devices: dict[str, MqttProbe] = {}
        try:
            for n in range(10):
                device_id = f"r{n}"
                # Persistent sessions: their subscriptions and queued offers survive.
                probe = MqttProbe(fresh_mosquitto.url, client_id=f"{run}-{device_id}",
                                  clean_session=False)
                probe.subscribe(str(settings.topics.offer(device_id)))
                devices[device_id] = probe

            def announce(device_id: str, wait: bool) -> None:
                topic = str(settings.topics.announce(device_id))
                payload = json.dumps(
                    {"build_id": "b1", "version": "1.0.0", "request_id": f"req-{device_id}"}
                )
                if wait:
                    devices[device_id].publish(topic, payload)
                else:  # the broker may be down: paho keeps QoS 1 messages for the reconnect
                    devices[device_id].client.publish(topic, payload, qos=1)

            for device_id in list(devices)[:5]:
                announce(device_id, wait=True)
            fresh_mosquitto.restart()  # SIGTERM: Mosquitto saves its sessions and queues
            for device_id in list(devices)[5:]:
                announce(device_id, wait=False)

            for device_id, probe in devices.items():
                offers = offers_answering(probe, {f"req-{device_id}"}, RECONNECT_WAIT)
                offer = offers[f"req-{device_id}"]
                assert (offer["status"], offer["build_id"], offer["device_id"]) == (
                    "update-available", "b2", device_id
                )
            assert bridge.stats.connects >= 2  # it did lose the broker and come back
        finally:
            for probe in devices.values():
                probe.close()


def test_announcements_made_while_the_bridge_process_was_killed_are_answered(
    ota_dirs: Any, mosquitto: MosquittoServer
) -> None:
    settings = bridge_settings(ota_dirs, mosquitto.url, "5")
    env = ota_env({
        **ota_dirs.env(),
        "OTA_BROKER_URL": mosquitto.url,
        "OTA_TOPIC_PREFIX": settings.topic_prefix,
        "OTA_MQTT_CLIENT_ID": settings.mqtt_client_id,  # the same session after the restart
        "OTA_CATALOG_POLL_SECONDS": "0.1",
        "OTA_LOG_LEVEL": "INFO",
    })
    admin = Services.from_settings(settings)
    add_release(admin, "b2", "2.0.0")
    fleet = MqttProbe(mosquitto.url)
    fleet.subscribe(f"{settings.topic_prefix}/devices/+/offer")

    def announce(device_id: str, request_id: str) -> None:
        payload = json.dumps({"build_id": "b1", "version": "1.0.0", "request_id": request_id})
        fleet.publish(str(settings.topics.announce(device_id)), payload)  # broker acked

    bridge = OtaProcess(["bridge"], env, ota_dirs.root)
    try:
        bridge.wait_for_line("bridge subscribed")
        announce("k0", "before")
        assert offers_answering(fleet, {"before"}, WAIT)["before"]["build_id"] == "b2"

        bridge.proc.kill()  # SIGKILL: no clean disconnect, no flush
        bridge.proc.wait(WAIT)
        wanted = set()
        for n in range(20):
            announce(f"k{n}", f"down-{n}")
            wanted.add(f"down-{n}")

        bridge = OtaProcess(["bridge"], env, ota_dirs.root)
        bridge.wait_for_line("bridge subscribed")
        offers = offers_answering(fleet, wanted, WAIT)
        for n in range(20):
            offer = offers[f"down-{n}"]
            assert (offer["status"], offer["device_id"]) == ("update-available", f"k{n}")
    finally:
        bridge.stop()
        fleet.close()
        admin.close()
        # Do not leave the bridge's persistent session queueing on the shared broker.
        MqttProbe(mosquitto.url, client_id=settings.mqtt_client_id,
                  protocol=MQTTProtocolVersion.MQTTv5, clean_session=True).close()
    assert "Traceback" not in bridge.output


# -- duplicates ----------------------------------------------------------------------------


def test_a_duplicate_announcement_gets_the_same_bytes_and_is_recorded_once(
    ota_dirs: Any, mosquitto: MosquittoServer
) -> None:
    settings = bridge_settings(ota_dirs, mosquitto.url, "5")
    ensure_offer_key(settings.keys_dir, load_signer(settings.keys_dir))  # sealed, timestamped
    with running_bridge(settings) as (bridge, services):
        add_release(services, "b2", "2.0.0")
        services.catalog.refresh()
        device = FakeDevice(mosquitto.url, settings, "dup-1")
        try:
            payload = b'{"build_id": "b1", "version": "1.0.0", "request_id": "once"}'
            device.publish(device.announce_topic, payload)
            first = device.next_offer()
            time.sleep(1.1)  # a fresh answer would now carry another issued_at
            device.publish(device.announce_topic, payload)
            assert device.next_offer() == first
            assert bridge.stats.duplicates == 1

            # Another request id is another request: answered afresh.
            other = device.announce_raw(
                b'{"build_id": "b1", "version": "1.0.0", "request_id": "twice"}'
            )
            assert isinstance(other, UpdateOffer) and other.request_id == "twice"

            # A cached "up-to-date" never hides a release published since.
            current = b'{"build_id": "b2", "request_id": "again"}'
            assert isinstance(device.announce_raw(current), UpToDate)
            add_release(services, "b3", "3.0.0")
            services.catalog.refresh()
            newer = device.announce_raw(current)
            assert isinstance(newer, UpdateOffer) and newer.build_id == "b3"

            assert bridge.flush_registry(WAIT)
            kinds = [e["kind"] for e in services.registry.history("dup-1")]
            assert kinds.count("announce") == 4  # once, twice, again, again (new catalog)
        finally:
            device.close()


# -- a flooding device ---------------------------------------------------------------------


def test_a_burst_from_one_device_is_rate_limited_logged_once_and_others_are_answered(
    ota_dirs: Any, mosquitto: MosquittoServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="broker_bridge")
    rate, burst, count = 2.0, 20, 1000
    settings = bridge_settings(
        ota_dirs, mosquitto.url, "5", device_rate_limit=rate, device_rate_burst=burst
    )
    with running_bridge(settings) as (bridge, services):
        add_release(services, "b2", "2.0.0")
        services.catalog.refresh()
        flooder = FakeDevice(mosquitto.url, settings, "flooder")
        other = FakeDevice(mosquitto.url, settings, "bystander")
        try:
            payload = b'{"build_id": "b1", "version": "1.0.0", "request_id": "same"}'
            started = time.monotonic()
            infos = [
                flooder.probe.client.publish(flooder.announce_topic, payload, qos=1)
                for _ in range(count)
            ]
            # While the burst is on its way, another device asks and is answered.
            wait_until(lambda: bridge.stats.rate_limited > 0, "the limiter never kicked in")
            answer = other.announce(build_id="b1", version="1.0.0", request_id="mine")
            assert isinstance(answer, UpdateOffer) and answer.request_id == "mine"

            for info in infos:
                info.wait_for_publish(WAIT)
            stats = bridge.stats

            def flooder_answered() -> int:
                return stats.announcements - 1 + stats.duplicates  # minus the bystander

            wait_until(lambda: flooder_answered() + stats.rate_limited == count,
                       f"not every message was handled: {stats}")
            elapsed = time.monotonic() - started
            answered = flooder_answered()
            assert answered <= burst + rate * elapsed + 1, (answered, elapsed)
            assert stats.rate_limited == count - answered

            replies = [flooder.next_offer() for _ in range(answered)]
            assert len(set(replies)) == 1  # duplicates: the same bytes every time
            assert bridge.flush_registry(WAIT)
            kinds = [e["kind"] for e in services.registry.history("flooder")]
            assert kinds.count("announce") == 1
        finally:
            flooder.close()
            other.close()
        lines = [r.getMessage() for r in caplog.records if "flooder" in r.getMessage()]
        windows = 1 + int(elapsed / 10.0) + 1
        assert 1 <= len(lines) <= 2 * windows, lines  # not one per message
        assert any("rate-limited" in line for line in lines)


# -- hostile ids ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        (b'{"build_id": "b1", "device_id": "dev+1"}', "does not match the topic"),
        (b'{"build_id": "b1", "device_id": "#"}', "does not match the topic"),
        (b'{"build_id": "b1", "device_id": "ids/dev-x/announce"}', "does not match the topic"),
        (b'{"build_id": "b+1"}', "build_id"),
        (b'{"build_id": "b1", "hardware": "board/#"}', "hardware"),
        (b'{"build_id": "b1", "channel": "+"}', "channel"),
    ],
)
def test_wildcards_and_slashes_in_payload_ids_are_refused(
    ota_dirs: Any, mosquitto: MosquittoServer, payload: bytes, detail: str
) -> None:
    settings = bridge_settings(ota_dirs, mosquitto.url, "5")
    with running_bridge(settings) as (bridge, services):
        device = FakeDevice(mosquitto.url, settings, "dev-x")
        try:
            reply = device.expect_error_raw(payload)
            assert (reply.error, reply.device_id) == ("bad-request", "dev-x")
            assert detail in reply.detail
            assert isinstance(device.announce(build_id="b1", version="1.0"), UpToDate)
            assert bridge.flush_registry(WAIT)
            record = services.registry.get("dev-x")
            assert record is not None and record.hardware is None and record.channel is None
        finally:
            device.close()


def _mqtt_string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def _packet(kind: int, body: bytes) -> bytes:
    length, encoded = len(body), b""
    while True:
        byte, length = length % 128, length // 128
        encoded += bytes([byte | (0x80 if length else 0)])
        if not length:
            return bytes([kind]) + encoded + body


def publish_raw(url_port: int, topic: str, payload: bytes) -> bool:
    """PUBLISH (QoS 0) over a hand-made MQTT 3.1.1 connection, bypassing paho's own checks
    on wildcards; True if the broker then closed the connection (it refused the packet)."""
    with socket.create_connection(("127.0.0.1", url_port), timeout=WAIT) as sock:
        connect = _mqtt_string("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 30)
        sock.sendall(_packet(0x10, connect + _mqtt_string(f"raw-{uuid.uuid4().hex[:8]}")))
        assert sock.recv(4)[:1] == b"\x20"  # CONNACK
        sock.sendall(_packet(0x30, _mqtt_string(topic) + payload))
        sock.sendall(_packet(0xC0, b""))  # PINGREQ: answered only if the broker kept us
        try:
            return sock.recv(2) == b""
        except ConnectionResetError:
            return True


def test_wildcards_and_slashes_in_topic_ids_never_reach_the_bridge(
    ota_dirs: Any, mosquitto: MosquittoServer
) -> None:
    settings = bridge_settings(ota_dirs, mosquitto.url, "5")
    prefix = settings.topic_prefix
    with running_bridge(settings) as (bridge, _services), MqttProbe(mosquitto.url) as probe:
        probe.subscribe(f"{prefix}/devices/+/offer")
        announcement = b'{"build_id": "b1", "version": "1.0"}'
        # Wildcards are not allowed in a PUBLISH topic: the broker drops the sender.
        for device_id in ("+", "#", "dev+1", "dev#"):
            assert publish_raw(mosquitto.port, f"{prefix}/devices/{device_id}/announce",
                               announcement), device_id
        # A slash makes it another topic level: no subscription of the bridge matches.
        probe.publish(f"{prefix}/devices/a/b/announce", announcement)
        probe.publish(f"{prefix}/devices/ok-1/announce", announcement)
        reply = probe.expect(WAIT)
        assert reply.topic == f"{prefix}/devices/ok-1/offer"  # the first and only reply
        assert probe.messages.empty()
        stats = bridge.stats.snapshot()
        assert (stats["announcements"], stats["dropped"]) == (1, 0), stats


def test_an_error_reply_names_no_other_device(ota_dirs: Any, mosquitto: MosquittoServer) -> None:
    """A payload claiming another device is answered on the sender's own topic only."""
    settings = bridge_settings(ota_dirs, mosquitto.url, "5")
    with running_bridge(settings), MqttProbe(mosquitto.url) as probe:
        probe.subscribe(f"{settings.topic_prefix}/devices/+/offer")
        probe.publish(str(settings.topics.announce("mallory")),
                      b'{"build_id": "b1", "device_id": "victim", "request_id": "x"}')
        message = probe.expect(WAIT)
        assert message.topic == str(settings.topics.offer("mallory"))
        reply = json.loads(message.payload)
        assert reply["device_id"] == "mallory" and reply["error"] == "bad-request"
        assert "victim" not in message.payload.decode()
        assert isinstance(ErrorReply.model_validate(reply), ErrorReply)
