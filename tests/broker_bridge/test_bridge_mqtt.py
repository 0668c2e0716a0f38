"""The bridge end to end over real sockets: Mosquitto (MQTT 5 and 3.1.1) and embedded amqtt.

Devices are plain paho clients publishing raw bytes, so malformed input really
crosses the broker. Nothing here asserts on speed; timeouts only bound waiting.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from broker_bridge.bridge import Bridge, BrokerAddress
from ota_core.envelope import TrustedOfferKeys
from ota_core.errors import InvalidInput
from ota_core.keyfiles import (
    ensure_offer_key,
    load_offer_signer,
    load_signer,
    load_verifier,
    rotate_offer_key,
)
from ota_core.models import ErrorReply, UpdateOffer, UpToDate
from ota_core.services import Services
from ota_core.settings import Settings
from ota_core.store.devices import DeviceRecord
from ota_core.verify import OfferChecker, PackageDigest
from tests.broker_bridge.peers import (
    WAIT,
    FakeDevice,
    add_release,
    bridge_settings,
    running_bridge,
)
from tests.support import (
    MosquittoServer,
    MqttProbe,
    add_mosquitto_user,
    free_port,
    start_mosquitto,
)

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class BrokerUnderTest:
    url: str
    protocol: str  # what the bridge speaks


@pytest.fixture(params=["mosquitto-mqtt5", "mosquitto-mqtt311", "amqtt-mqtt311"])
def broker(request: pytest.FixtureRequest) -> BrokerUnderTest:
    if request.param.startswith("mosquitto"):
        server: MosquittoServer = request.getfixturevalue("mosquitto")
        return BrokerUnderTest(server.url, "5" if request.param.endswith("mqtt5") else "3.1.1")
    url: str = request.getfixturevalue("amqtt_broker")
    return BrokerUnderTest(url, "3.1.1")  # amqtt has no MQTT 5


@pytest.fixture
def settings(ota_dirs: Any, broker: BrokerUnderTest) -> Settings:
    return bridge_settings(ota_dirs, broker.url, broker.protocol)


@pytest.fixture
def device_factory(broker: BrokerUnderTest, settings: Settings) -> Iterator[Any]:
    devices: list[FakeDevice] = []

    def make(device_id: str) -> FakeDevice:
        devices.append(FakeDevice(broker.url, settings, device_id))
        return devices[-1]

    yield make
    for device in devices:
        device.close()


def wait_for_record(
    services: Services, device_id: str, done: Any, timeout: float = WAIT
) -> DeviceRecord:
    deadline = time.monotonic() + timeout
    record = None
    while time.monotonic() < deadline:
        record = services.registry.get(device_id)
        if record is not None and done(record):
            return record
        time.sleep(0.05)
    raise AssertionError(f"registry never showed the expected state for {device_id}: {record}")


# -- the contract ------------------------------------------------------------------------


def test_update_offer_verifies_and_status_reaches_the_database(
    settings: Settings, device_factory: Any
) -> None:
    ensure_offer_key(settings.keys_dir, load_signer(settings.keys_dir))
    offer_key = load_offer_signer(settings.keys_dir)
    assert offer_key is not None
    with running_bridge(settings) as (_bridge, services):
        add_release(services, "build-1", "1.0.0")
        add_release(services, "build-2", "1.1.0", hardware="board-a")
        services.catalog.refresh()
        device = device_factory("dev-a1")

        offer = device.expect_update(
            build_id="build-1", hardware="board-a", channel="stable", request_id="req-1"
        )
        # The device's own checks: pinned keys, envelope (its id, its nonce, not expired),
        # manifest hash, both release signatures.
        verifier = load_verifier(settings.keys_dir / "public.pem")
        checker = OfferChecker(
            verifier,
            "dev-a1",
            installed_version="1.0.0",
            hardware="board-a",
            offer_keys=TrustedOfferKeys.pinned([offer_key.public_hex]),
        )
        manifest = checker.check(offer, expected_request_id="req-1")
        assert (manifest.build_id, manifest.version) == ("build-2", "1.1.0")
        assert offer.url == "/packages/fw-build-2.bin"
        digest = PackageDigest(offer.size, offer.checksum)
        digest.update((settings.packages_dir / "fw-build-2.bin").read_bytes())
        digest.finish()

        for state in ("downloading", "verifying", "installing", "installed"):
            device.report(state, "build-2")
        record = wait_for_record(services, "dev-a1", lambda r: r.last_state == "installed")
        assert record.last_state_build == "build-2"
        assert record.build_id == "build-1"  # its last announcement
        assert record.last_offered_build == "build-2"
        assert record.hardware == "board-a"


def test_up_to_date_and_unknown_build(settings: Settings, device_factory: Any) -> None:
    with running_bridge(settings) as (_bridge, services):
        add_release(services, "build-5", "5.0.0")
        services.catalog.refresh()
        device = device_factory("dev-b1")

        current = device.expect_up_to_date(build_id="build-5", request_id="q1")
        assert (current.build_id, current.version, current.request_id) == ("build-5", "5.0.0", "q1")

        unknown = device.expect_error_raw(b'{"build_id": "home-made", "request_id": "q2"}')
        assert (unknown.error, unknown.request_id) == ("unknown-build", "q2")

        newer_unknown = device.announce(build_id="home-made", version="9.0.0")
        assert isinstance(newer_unknown, UpToDate)
        older_unknown = device.announce(build_id="home-made", version="4.0.0")
        assert isinstance(older_unknown, UpdateOffer) and older_unknown.build_id == "build-5"


BAD_ANNOUNCEMENTS = [
    (b"definitely not json", "bad-request"),
    (b"", "bad-request"),
    (b'{"build_id": "\xc3\x28"}', "bad-request"),  # invalid UTF-8
    (b'{"build_id": 1001}', "bad-request"),
    (b'{"build_id": ["a"], "version": {"x": 1}}', "bad-request"),
    (b'{"build_id": "build-1", "version": "not-a-version"}', "bad-request"),
    (b"[" * 2000 + b"]" * 2000, "bad-request"),  # nested too deeply
    (b'{"build_id": ' + b"7" * 3000 + b"}", "bad-request"),  # huge integer
    # Over OTA_MAX_MESSAGE_BYTES, under the broker's max_packet_size (which would drop the sender).
    (b'{"build_id": "build-1", "pad": "' + b"x" * 8_000 + b'"}', "payload-too-large"),
    (b'{"build_id": "build-1", "device_id": "someone-else"}', "bad-request"),
    (b'"just a string"', "bad-request"),
]


def test_every_malformed_announcement_is_answered_and_the_next_good_one_too(
    settings: Settings, device_factory: Any
) -> None:
    with running_bridge(settings) as (bridge, services):
        add_release(services, "build-2", "2.0.0")
        services.catalog.refresh()
        device = device_factory("dev-c1")
        for payload, code in BAD_ANNOUNCEMENTS:
            reply = device.expect_error_raw(payload)
            assert reply.error == code, (payload[:60], reply)
            assert reply.device_id == "dev-c1"
            good = device.expect_update(build_id="build-1", version="1.0.0", request_id="ok")
            assert good.request_id == "ok" and good.build_id == "build-2"
        # A readable request_id survives into the error reply.
        reply = device.expect_error_raw(b'{"build_id": 5, "request_id": "match-me"}')
        assert reply.request_id == "match-me"
        assert bridge.stats.announce_errors == len(BAD_ANNOUNCEMENTS) + 1


def test_unanswerable_topics_are_dropped_and_the_bridge_keeps_answering(
    settings: Settings, broker: BrokerUnderTest
) -> None:
    with running_bridge(settings) as (bridge, services), MqttProbe(broker.url) as probe:
        add_release(services, "build-2", "2.0.0")
        services.catalog.refresh()
        prefix = settings.topic_prefix
        probe.subscribe(f"{prefix}/devices/+/offer")  # sees every reply the bridge sends
        for bad_id in ("bad id", "x" * 65, "semi;colon", "caf\u00e9"):
            probe.publish(f"{prefix}/devices/{bad_id}/announce", b'{"build_id": "build-1"}')
        # Published after the bad ones on the same connection, so answered after them.
        probe.publish(f"{prefix}/devices/dev-ok/announce", b'{"build_id": "x", "version": "1.0"}')
        offer = probe.expect(WAIT)
        assert offer.topic == f"{prefix}/devices/dev-ok/offer"  # the first and only reply
        assert json.loads(offer.payload)["status"] == "update-available"
        assert probe.messages.empty()
        assert bridge.stats.dropped == 4


def test_malformed_status_is_dropped_and_good_ones_still_recorded(
    settings: Settings, device_factory: Any
) -> None:
    with running_bridge(settings) as (bridge, services):
        device = device_factory("dev-d1")
        for payload in (
            b"nope",
            b'{"state": "exploded", "build_id": "b"}',
            b'{"state": "installed"}',
            b'{"state": "installed", "build_id": "b", "device_id": "dev-other"}',
        ):
            device.publish(device.status_topic, payload)
        device.report("failed", "b7", detail="disk")
        # An announcement after them: once it is answered, every status was handled.
        device.announce(build_id="b7", version="1.0")
        record = wait_for_record(services, "dev-d1", lambda r: r.last_state is not None)
        assert (record.last_state, record.last_state_build, record.last_detail) == (
            "failed", "b7", "disk"
        )
        assert bridge.stats.status_errors == 4
        assert not device.has_pending()  # status reports get no replies


def test_release_published_by_another_process_is_used_for_the_very_next_announcement(
    ota_dirs: Any, broker: BrokerUnderTest
) -> None:
    # A poll far too slow to explain it: the answer itself waits for a fresh catalog.
    settings = bridge_settings(ota_dirs, broker.url, broker.protocol, catalog_poll_seconds=3600)
    with running_bridge(settings):
        device = FakeDevice(broker.url, settings, "dev-e1")
        admin = Services.from_settings(settings)  # the admin side, as `ota http` has it
        try:
            assert isinstance(device.announce(build_id="build-1", version="1.0.0"), UpToDate)
            unknown = device.announce(build_id="build-2")
            assert isinstance(unknown, ErrorReply) and unknown.error == "unknown-build"

            add_release(admin, "build-2", "2.0.0")
            offer = device.announce(build_id="build-1", version="1.0.0")  # no retry, no sleep
            assert isinstance(offer, UpdateOffer) and offer.build_id == "build-2"
            current = device.announce(build_id="build-2")  # its build is known now
            assert isinstance(current, UpToDate) and current.version == "2.0.0"

            add_release(admin, "build-3", "3.0.0")
            newer = device.announce(build_id="build-2")
            assert isinstance(newer, UpdateOffer) and newer.build_id == "build-3"
        finally:
            admin.close()
            device.close()


def test_offer_key_rotated_by_another_process_is_used_without_restart(
    ota_dirs: Any, mosquitto: MosquittoServer
) -> None:
    settings = bridge_settings(ota_dirs, mosquitto.url, "5")
    release_signer = load_signer(settings.keys_dir)
    ensure_offer_key(settings.keys_dir, release_signer)
    with running_bridge(settings):
        device = FakeDevice(mosquitto.url, settings, "dev-k1")
        try:
            before = device.announce(build_id="b", version="1.0", request_id="r-1")
            assert before.envelope is not None
            new_key, retired = rotate_offer_key(settings.keys_dir, release_signer, 3600)
            assert retired == [json.loads(before.envelope)["key_id"]]
            deadline = time.monotonic() + WAIT
            while True:
                after = device.announce(build_id="b", version="1.0", request_id="r-2")
                assert after.envelope is not None
                if json.loads(after.envelope)["key_id"] == new_key:
                    break
                assert time.monotonic() < deadline, "the rotated key was never used"
                time.sleep(0.05)
        finally:
            device.close()


def test_stop_writes_the_registry_backlog(settings: Settings, device_factory: Any) -> None:
    services = Services.from_settings(settings)
    bridge = Bridge(settings, services)
    try:
        bridge.start()
        assert bridge.wait_ready(WAIT)
        device = device_factory("dev-f1")
        device.report("installing", "b2")
        device.announce(build_id="b1", version="1.0.0")  # answered => status handled before it
        bridge.stop()
        record = services.registry.get("dev-f1")  # no polling: stop() flushed
        assert record is not None
        assert (record.last_state, record.build_id) == ("installing", "b1")
    finally:
        bridge.stop()
        services.close()


def test_stop_right_after_a_burst_still_delivers_every_offer(
    settings: Settings, device_factory: Any
) -> None:
    count = 300
    services = Services.from_settings(settings)
    bridge = Bridge(settings, services)
    try:
        bridge.start()
        assert bridge.wait_ready(WAIT)
        add_release(services, "build-2", "2.0.0")
        device = device_factory("dev-l1")
        infos = [  # a burst: not waiting for each acknowledgement
            device.probe.client.publish(
                device.announce_topic,
                json.dumps({"build_id": "b", "version": "1.0", "request_id": f"n{i}"}),
                qos=1,
            )
            for i in range(count)
        ]
        for info in infos:
            info.wait_for_publish(WAIT)
        deadline = time.monotonic() + WAIT
        while bridge.stats.announcements < count:
            assert time.monotonic() < deadline, bridge.stats
            time.sleep(0.01)
        bridge.stop()  # at once: offers may still be on their way
        received = {json.loads(device.next_offer())["request_id"] for _ in range(count)}
        assert received == {f"n{i}" for i in range(count)}
    finally:
        bridge.stop()
        services.close()


# -- connection life cycle (Mosquitto only: these restart the broker) --------------------


def test_announcements_sent_while_the_bridge_is_down_are_answered_when_it_returns(
    ota_dirs: Any, mosquitto: MosquittoServer
) -> None:
    # Persistent session (MQTT 5, clean_start=False + session expiry, QoS 1 subscriptions).
    settings = bridge_settings(ota_dirs, mosquitto.url, "5")
    with running_bridge(settings) as (_bridge, services):
        add_release(services, "build-2", "2.0.0")
    device = FakeDevice(mosquitto.url, settings, "dev-g1")
    try:
        device.publish(
            device.announce_topic,
            b'{"build_id": "x", "version": "1.0", "request_id": "while-away"}',
        )
        with running_bridge(settings):  # same client id: the broker kept its session
            offer = json.loads(device.next_offer())
        assert (offer["status"], offer["request_id"]) == ("update-available", "while-away")
    finally:
        device.close()


def test_bridge_started_before_the_broker_connects_when_it_appears(
    ota_dirs: Any, fresh_mosquitto: MosquittoServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    fresh_mosquitto.stop()
    settings = bridge_settings(ota_dirs, fresh_mosquitto.url, "5")
    services = Services.from_settings(settings)
    bridge = Bridge(settings, services)
    try:
        bridge.start()
        deadline = time.monotonic() + WAIT
        while "broker unreachable" not in caplog.text:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.05)
        assert not bridge.ready
        fresh_mosquitto.start()
        assert bridge.wait_ready(WAIT + 30)  # paho backs off up to 30 s between attempts
        device = FakeDevice(fresh_mosquitto.url, settings, "dev-h1")
        try:
            assert isinstance(device.announce(build_id="b", version="1.0"), UpToDate)
        finally:
            device.close()
    finally:
        bridge.stop()
        services.close()
    assert "Traceback" not in caplog.text


def test_bridge_reconnects_and_resubscribes_after_a_broker_restart(
    ota_dirs: Any, fresh_mosquitto: MosquittoServer
) -> None:
    settings = bridge_settings(ota_dirs, fresh_mosquitto.url, "5")
    with running_bridge(settings) as (bridge, services):
        add_release(services, "build-2", "2.0.0")
        assert bridge.stats.connects == 1
        fresh_mosquitto.restart()
        deadline = time.monotonic() + WAIT + 30
        while not (bridge.stats.connects >= 2 and bridge.ready):
            assert time.monotonic() < deadline, "bridge never came back"
            time.sleep(0.05)
        device = FakeDevice(fresh_mosquitto.url, settings, "dev-i1")
        try:
            assert device.expect_update(build_id="b", version="1.0").build_id == "build-2"
        finally:
            device.close()


def test_credentials_are_used_and_a_refusal_is_logged_plainly(
    ota_dirs: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "locked"
    folder.mkdir()
    add_mosquitto_user(folder / "passwd", "ota-bridge", "bridge-secret-1")
    add_mosquitto_user(folder / "passwd", "dev-j1", "device-secret-1")
    server = start_mosquitto(
        folder, extra_options=["allow_anonymous false", f"password_file {folder / 'passwd'}"]
    )
    try:
        wrong = bridge_settings(
            ota_dirs, server.url, "5", mqtt_username="ota-bridge", mqtt_password="not-it"
        )
        services = Services.from_settings(wrong)
        bridge = Bridge(wrong, services)
        try:
            bridge.start()
            deadline = time.monotonic() + WAIT
            while "broker refused the bridge's connection" not in caplog.text:
                assert time.monotonic() < deadline, caplog.text
                time.sleep(0.05)
            assert not bridge.ready
        finally:
            bridge.stop()
            services.close()
        assert "Not authorized" in caplog.text
        assert "Traceback" not in caplog.text
        assert "not-it" not in caplog.text  # the password is never logged

        right = bridge_settings(
            ota_dirs, server.url, "5", mqtt_username="ota-bridge", mqtt_password="bridge-secret-1"
        )
        with running_bridge(right):
            device = FakeDevice(
                server.url, right, "dev-j1", username="dev-j1", password="device-secret-1"
            )
            try:
                assert isinstance(device.announce(build_id="b", version="1.0"), UpToDate)
            finally:
                device.close()
    finally:
        server.stop()


# -- `ota bridge` as a process: plain logs, clean exit on signals --------------------------

RUN_FOREVER = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="%(levelname)s %(name)s %(message)s")
from ota_core.settings import Settings
from ota_core.services import Services
from broker_bridge.bridge import Bridge
settings = Settings()
services = Services.from_settings(settings)
Bridge(settings, services).run_forever()
services.close()
print("exited cleanly", flush=True)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_run_forever_keeps_retrying_an_unreachable_broker_and_stops_on_signal(
    ota_dirs: Any, signum: int
) -> None:
    # Nobody listens on that port.
    env = {**os.environ, **ota_dirs.env(broker_url=f"mqtt://127.0.0.1:{free_port()}")}
    process = subprocess.Popen(
        [sys.executable, "-c", RUN_FOREVER],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    unreachable = threading.Event()

    def read_stderr() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if "broker unreachable" in line:
                unreachable.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        assert unreachable.wait(WAIT), "".join(lines)
        process.send_signal(signum)
        process.wait(timeout=WAIT)
        assert process.stdout is not None
        stdout = process.stdout.read()  # a line or two: cannot fill the pipe
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    reader.join(5)
    log = "".join(lines)
    assert process.returncode == 0, log
    assert "exited cleanly" in stdout
    assert "Traceback" not in log
    assert "bridge stopped" in log


# -- small pieces ------------------------------------------------------------------------


def test_broker_address_from_url() -> None:
    assert BrokerAddress.from_url("mqtt://10.0.0.5:1884") == BrokerAddress("10.0.0.5", 1884, False)
    assert BrokerAddress.from_url("tcp://broker") == BrokerAddress("broker", 1883, False)
    assert BrokerAddress.from_url("mqtts://broker") == BrokerAddress("broker", 8883, True)
    for bad in ("http://x:1", "mqtt://", "broker:1883", "mqtt://h:99999"):
        with pytest.raises(InvalidInput):
            BrokerAddress.from_url(bad)
