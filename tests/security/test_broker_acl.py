"""The shipped Mosquitto configuration keeps devices apart, against a real bridge.

Broker: the repo's mosquitto.conf + mosquitto.acl unchanged (``secure_mosquitto``).
Bridge: a real :class:`Bridge` logged in as ota-bridge. Devices: paho clients logged in
with their own passwords. See tests/security/harness.py for how "never" is shown
without sleeping.
"""

from __future__ import annotations

import json
import time

import pytest
from paho.mqtt.enums import MQTTProtocolVersion

from ota_core.models import ErrorReply, UpdateOffer
from ota_core.mqtt_users import BRIDGE_USER, MONITOR_USER
from ota_core.topics import TopicKind
from tests.conftest import SECURE_TEST_DEVICES
from tests.security.harness import (
    NEW_BUILD,
    WAIT,
    announcement,
    fresh_request_id,
    secure_rig,
)
from tests.support import REPO_MOSQUITTO_CONF, MosquittoServer, MqttProbe, OtaDirs, connack

A, B, C = SECURE_TEST_DEVICES
NOT_AUTHORIZED = "Not authorized"


def test_device_cannot_announce_as_another_device(
    secure_mosquitto: MosquittoServer, ota_dirs: OtaDirs
) -> None:
    with secure_rig(ota_dirs, secure_mosquitto) as rig:
        a, b = rig.device(A), rig.device(B)
        spoofed = fresh_request_id("spoofed-by-a")
        a.publish(a.announce_topic(B), announcement(spoofed))
        # A's own announcement, sent after the spoof on the same connection, is answered:
        # the spoof was dropped on arrival, or it would have been answered first.
        a.expect_update(fresh_request_id("a-own"))
        assert rig.registry_has(A)
        assert not rig.registry_has(B), "the bridge recorded an announcement B never made"
        # B's first message is the answer to its own announcement, not to A's spoof.
        assert not b.has_pending()
        b.expect_update(fresh_request_id("b-own"))
        assert rig.bridge.stats.snapshot()["announcements"] == 2


def test_mqtt5_device_is_told_its_spoofed_announcement_was_refused(
    secure_mosquitto: MosquittoServer, ota_dirs: OtaDirs
) -> None:
    # MQTT 5 can say no: the PUBACK carries "Not authorized" (3.1.1 is acked silently).
    with secure_rig(ota_dirs, secure_mosquitto) as rig:
        a = rig.device(A, protocol=MQTTProtocolVersion.MQTTv5)
        reasons: list[str] = []
        a.probe.client.on_publish = lambda _c, _u, _mid, reason, _p: reasons.append(str(reason))
        info = a.probe.client.publish(
            a.announce_topic(B), announcement(fresh_request_id("spoof")), qos=1
        )
        info.wait_for_publish(WAIT)
        assert reasons == [NOT_AUTHORIZED]
        assert not rig.registry_has(B)


def test_wildcard_subscriber_receives_only_its_own_offers(
    secure_mosquitto: MosquittoServer, ota_dirs: OtaDirs
) -> None:
    with secure_rig(ota_dirs, secure_mosquitto) as rig:
        # Mosquitto 2.0 grants the SUBACK and filters at delivery: the test is what arrives.
        snoop = rig.device(A, listen=str(rig.settings.topics.filter(TopicKind.OFFER)))
        b = rig.device(B)
        for round_ in range(2):
            b.expect_update(fresh_request_id(f"b-{round_}"))
            # Published after B's offer: had B's offer been delivered to A, it would be
            # A's next message, ahead of the answer to A's own announcement.
            offer = snoop.expect_update(fresh_request_id(f"a-{round_}"))
            assert offer.device_id == A
        assert not snoop.has_pending()


def test_device_cannot_forge_an_offer_for_another_device(
    secure_mosquitto: MosquittoServer, ota_dirs: OtaDirs
) -> None:
    with secure_rig(ota_dirs, secure_mosquitto) as rig:
        a, b = rig.device(A), rig.device(B)
        genuine = b.expect_update(fresh_request_id("b-genuine"))
        forged = genuine.to_dict() | {"url": "http://evil.example/fw.bin"}
        # Replaying B's own genuine offer at B is refused just the same: only the bridge
        # writes offer topics.
        a.publish(a.offer_topic(B), json.dumps(forged).encode())
        a.publish(a.offer_topic(B), genuine.to_bytes())
        a.publish(a.offer_topic(A), genuine.to_bytes())  # nor its own offer topic
        # B's next message is the answer to its next announcement, nothing A sent.
        b.expect_update(fresh_request_id("b-after"))
        a.expect_update(fresh_request_id("a-after"))
        assert not a.has_pending() and not b.has_pending()


def test_device_cannot_report_for_another_device_nor_read_announcements(
    secure_mosquitto: MosquittoServer, ota_dirs: OtaDirs
) -> None:
    with secure_rig(ota_dirs, secure_mosquitto) as rig:
        topics = rig.settings.topics
        # A also listens to every device's announcements: that would leak B's build and
        # request ids (and its own must not echo back either).
        a = rig.device(A, listen=[str(topics.offer(A)), str(topics.filter(TopicKind.ANNOUNCE))])
        b = rig.device(B)
        forged = {"state": "failed", "build_id": NEW_BUILD, "detail": "forged by A"}
        a.publish(str(topics.status(B)), json.dumps(forged).encode())
        b.expect_update(fresh_request_id("b-own"))
        record = rig.services.registry.get(B) if rig.registry_has(B) else None
        assert record is not None and record.last_state is None, "A's forged status was recorded"
        # B's announcement (and A's own) would reach A before the answer to A's own.
        a.expect_update(fresh_request_id("a-own"))
        assert not a.has_pending()


def test_oversized_payload_never_reaches_the_bridge(
    secure_mosquitto: MosquittoServer, ota_dirs: OtaDirs
) -> None:
    limit = shipped_max_packet_size()
    with secure_rig(ota_dirs, secure_mosquitto) as rig:
        a, b = rig.device(A), rig.device(B)
        # Over the bridge's own 4 KiB limit but under the broker's: the bridge answers.
        middle = json.dumps({"build_id": "build-100", "pad": "x" * 8000}).encode()
        a.publish(a.announce_topic(), middle)
        _, reply = a.next_message()
        assert json.loads(reply)["error"] == "payload-too-large"
        before = rig.bridge.stats.snapshot()
        # Over the broker's limit: Mosquitto disconnects the sender and drops the packet.
        # (QoS 0: a QoS 1 message would be re-sent by paho after every reconnect.)
        a.probe.publish_nowait(a.announce_topic(), b"{" + b" " * limit + b"}")
        _wait_for_log(secure_mosquitto, f"Client {A} disconnected due to oversize packet")
        # The bridge keeps answering others; by the time it has, anything the broker had
        # forwarded from A would already have been handled.
        b.expect_update(fresh_request_id("b-after"))
        after = rig.bridge.stats.snapshot()
        assert after["announce_errors"] == before["announce_errors"]
        assert after["dropped"] == before["dropped"]
        assert after["announcements"] == before["announcements"] + 1
        # The disconnect is no ban: A logs in again (a fresh session) and is answered.
        a.close()
        rig.device(A).expect_update(fresh_request_id("a-back"))


def shipped_max_packet_size() -> int:
    for line in REPO_MOSQUITTO_CONF.read_text().splitlines():
        if line.startswith("max_packet_size "):
            return int(line.split()[1])
    raise AssertionError("mosquitto.conf sets no max_packet_size")


def _wait_for_log(broker: MosquittoServer, text: str) -> None:
    deadline = time.monotonic() + WAIT
    while text not in broker.log_text():
        assert time.monotonic() < deadline, f"mosquitto never logged {text!r}"
        time.sleep(0.05)


@pytest.mark.parametrize(
    "protocol", [MQTTProtocolVersion.MQTTv311, MQTTProtocolVersion.MQTTv5], ids=["3.1.1", "5"]
)
def test_wrong_credentials_and_anonymous_clients_are_refused(
    secure_mosquitto: MosquittoServer, protocol: MQTTProtocolVersion
) -> None:
    url, creds = secure_mosquitto.url, secure_mosquitto.credentials
    refused = {
        "anonymous": connack(url, protocol=protocol),
        "wrong password": connack(url, username=A, password=creds[A] + "x", protocol=protocol),
        "another device's password": connack(
            url, username=B, password=creds[A], protocol=protocol
        ),
        "unknown user": connack(url, username="dev-unknown", password=creds[A], protocol=protocol),
        "bridge with a device password": connack(
            url, username=BRIDGE_USER, password=creds[A], protocol=protocol
        ),
        "empty password": connack(url, username=A, password="", protocol=protocol),
    }
    assert refused == dict.fromkeys(refused, NOT_AUTHORIZED)
    assert connack(url, username=A, password=creds[A], protocol=protocol) == "Success"


def test_a_device_cannot_take_over_another_devices_client_id(
    secure_mosquitto: MosquittoServer, ota_dirs: OtaDirs
) -> None:
    # use_username_as_clientid: A connecting with client id "dev-sec-b" gets "dev-sec-a",
    # so B is neither kicked off nor its persistent session adopted.
    with secure_rig(ota_dirs, secure_mosquitto) as rig:
        b = rig.device(B)
        a = rig.device(A, client_id=B)
        b.expect_update(fresh_request_id("b-still-here"))
        a.expect_update(fresh_request_id("a-as-itself"))
        log = secure_mosquitto.log_text()
        assert f"Client {B} already connected, closing old connection" not in log
        assert f"as {A} (" in log


def test_monitor_user_reads_the_health_topic_and_nothing_else(
    secure_mosquitto: MosquittoServer, ota_dirs: OtaDirs
) -> None:
    # What compose's health check does (mosquitto_sub -u ota-monitor -t $SYS/broker/version).
    creds = secure_mosquitto.credentials
    with secure_rig(ota_dirs, secure_mosquitto) as rig:
        with MqttProbe(
            secure_mosquitto.url, username=MONITOR_USER, password=creds[MONITOR_USER]
        ) as monitor:
            monitor.subscribe("$SYS/broker/version")
            assert monitor.expect(WAIT).payload.startswith(b"mosquitto version 2.")
            monitor.subscribe(str(rig.settings.topics.filter(TopicKind.OFFER)))
            monitor.subscribe(str(rig.settings.topics.filter(TopicKind.ANNOUNCE)))
            # It can publish no announcement either, not even on a topic named after it.
            monitor.publish(str(rig.settings.topics.announce(MONITOR_USER)), announcement("m"))
            b = rig.device(B)
            b.expect_update(fresh_request_id("b"))
            assert monitor.messages.empty()
        assert not rig.registry_has(MONITOR_USER)


def test_bridge_works_throughout_a_run_of_attacks(
    secure_mosquitto: MosquittoServer, ota_dirs: OtaDirs
) -> None:
    url, creds = secure_mosquitto.url, secure_mosquitto.credentials
    with secure_rig(ota_dirs, secure_mosquitto) as rig:
        a, b, c = rig.device(A), rig.device(B), rig.device(C)
        for round_ in range(3):
            a.publish(a.announce_topic(B), announcement(fresh_request_id("spoof")))
            a.publish(a.offer_topic(C), b'{"status": "update-available"}')
            assert connack(url, username=B, password="not-" + creds[B]) == NOT_AUTHORIZED
            assert connack(url) == NOT_AUTHORIZED
            # Over max_packet_size: gets A disconnected.
            a.probe.publish_nowait(a.announce_topic(), b"x" * (shipped_max_packet_size() + 1))
            for device in (c, b):
                offer = device.expect_update(fresh_request_id(f"{device.device_id}-{round_}"))
                assert isinstance(offer, UpdateOffer)
            a.close()
            a = rig.device(A)  # logs in again, as a device does after a disconnect
        final = a.announce(fresh_request_id("a-final"))
        assert isinstance(final, UpdateOffer) and not isinstance(final, ErrorReply)
        assert rig.bridge.ready
