"""The reference device client against a real Mosquitto (and the embedded amqtt broker),
a real HTTP server, and offers built and sealed by the real OfferBuilder from a real
signed catalog and a real offer key."""

from __future__ import annotations

import hashlib
import json
import queue
import socket
import threading
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ota_core.device import DeviceClient, DeviceConfig, NotConnected, OfferTimeout, OutcomeKind
from ota_core.errors import UnknownBuild
from ota_core.keyfiles import load_verifier
from ota_core.models import Announcement, ErrorReply, Offer, UpdateOffer, UpToDate, parse_offer
from ota_core.offers import OfferBuilder
from tests.device.harness import DeviceFactory, OfferResponder, PackageServer, World, tampered
from tests.support import MqttProbe, add_mosquitto_user, start_mosquitto

FULL_RUN = ["downloading", "verifying", "installing", "installed"]


def offer_of(world: World, build_id: str, device_id: str, request_id: str | None) -> UpdateOffer:
    """A genuine offer, sealed for ``device_id`` and ``request_id`` with the world's offer key."""
    return world.offer(build_id, device_id, request_id)


def installed_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --- the happy paths ------------------------------------------------------------------------


def test_installs_the_offered_update_and_reports_each_step(
    make_device: DeviceFactory, responder: OfferResponder, world: World
) -> None:
    device = make_device()
    outcome = device.run_once()

    assert outcome.kind is OutcomeKind.INSTALLED, outcome.message()
    assert (outcome.offered_build_id, outcome.offered_version) == ("build-1002", "1.2.0")
    package = world.packages["build-1002"]
    assert outcome.path == device.install_dir() / package.release.filename
    assert hashlib.sha256(outcome.path.read_bytes()).hexdigest() == package.release.sha256
    assert outcome.sha256 == package.release.sha256
    # Nothing else is left behind (no partial download files); the state is kept.
    assert installed_files(device.install_dir()) == [package.release.filename, "state.json"]
    # The device now runs the new build.
    assert (device.build_id, device.version) == ("build-1002", "1.2.0")
    assert (outcome.build_id, outcome.version) == ("build-1002", "1.2.0")

    me = device.config.device_id
    assert responder.wait_statuses(me) == FULL_RUN
    assert {s.build_id for s in responder.statuses[me]} == {"build-1002"}
    assert {s.request_id for s in responder.statuses[me]} == {outcome.request_id}
    [announcement] = responder.announcements[me]
    assert announcement.build_id == "build-1001"
    assert announcement.version == "1.1.0"
    assert announcement.request_id == outcome.request_id


def test_announce_returns_the_offer_for_the_given_request_id(
    make_device: DeviceFactory, responder: OfferResponder
) -> None:
    device = make_device()
    offer = device.announce("my-request-1")
    assert isinstance(offer, UpdateOffer)
    assert offer.request_id == "my-request-1"
    assert offer.device_id == device.config.device_id


def test_up_to_date_device_installs_nothing(
    make_device: DeviceFactory, responder: OfferResponder
) -> None:
    device = make_device(build_id="build-1002", version="1.2.0")
    outcome = device.run_once()
    assert outcome.kind is OutcomeKind.UP_TO_DATE
    assert outcome.ok
    assert (outcome.build_id, outcome.version) == ("build-1002", "1.2.0")
    assert installed_files(device.install_dir()) == []
    assert responder.statuses[device.config.device_id] == []


def test_error_reply_is_reported_with_its_code(
    make_device: DeviceFactory, responder: OfferResponder, world: World
) -> None:
    def unknown(device_id: str, announcement: Announcement) -> list[bytes]:
        error = UnknownBuild(f"build {announcement.build_id!r} is not in the catalog")
        return [world.builder.error(device_id, announcement.request_id, error).to_bytes()]

    responder.answer = unknown
    device = make_device()
    outcome = device.run_once()
    assert outcome.kind is OutcomeKind.ERROR_REPLY
    assert not outcome.ok
    assert outcome.reason == "unknown-build"
    assert "not in the catalog" in (outcome.detail or "")
    assert "unknown-build" in outcome.message()


def test_absolute_offer_urls_are_used_as_given(
    make_device: DeviceFactory, responder: OfferResponder, http_server: PackageServer, world: World
) -> None:
    builder = replace(world.builder, package_base_url=http_server.url)
    responder.answer = lambda device_id, a: [
        builder.for_announcement(responder.catalog, device_id, a).to_bytes()
    ]
    # Nothing listens on the discard port: only the absolute url can work.
    device = make_device(http_base_url="http://127.0.0.1:9", keys_url=http_server.url + "/keys")
    outcome = device.run_once()
    assert outcome.kind is OutcomeKind.INSTALLED, outcome.message()


@pytest.mark.parametrize("protocol", ["auto", "3.1.1"])
def test_runs_against_the_embedded_amqtt_broker(
    amqtt_broker: str,
    world: World,
    http_server: PackageServer,
    device_config: DeviceConfig,
    protocol: str,
) -> None:
    responder = OfferResponder(amqtt_broker, world.catalog, world.builder)
    try:
        # A broker of its own: the default topic prefix.
        config = replace(
            device_config, broker_url=amqtt_broker, protocol=protocol, topic_prefix="ota/v1"
        )
        with DeviceClient(config) as device:
            outcome = device.run_once()
            # amqtt speaks only 3.1.1: "auto" found that out by itself.
            assert device.protocol == "3.1.1"
        assert outcome.kind is OutcomeKind.INSTALLED, outcome.message()
        assert responder.wait_statuses(config.device_id) == FULL_RUN
    finally:
        responder.close()


def test_mqtt_5_only_is_refused_by_amqtt(amqtt_broker: str, device_config: DeviceConfig) -> None:
    config = replace(device_config, broker_url=amqtt_broker, protocol="5", timeout=5)
    outcome = DeviceClient(config).run_once()
    assert outcome.kind is OutcomeKind.CONNECT_FAILED
    assert "Unsupported protocol version" in (outcome.detail or "")


def test_auto_uses_mqtt_5_where_the_broker_speaks_it(make_device: DeviceFactory) -> None:
    assert make_device(protocol="auto").protocol == "5"


# --- offers for other requests ----------------------------------------------------------------


def test_offers_for_other_request_ids_are_ignored(
    make_device: DeviceFactory, responder: OfferResponder, world: World
) -> None:
    def decoy_first(device_id: str, announcement: Announcement) -> list[bytes]:
        decoy = UpToDate(device_id=device_id, request_id="someone-else", build_id="build-1001")
        real = responder.policy_answer(device_id, announcement)
        return [decoy.to_bytes(), *real]

    responder.answer = decoy_first
    seen: queue.Queue[Offer] = queue.Queue()
    device = make_device()
    device.on_offer = seen.put
    outcome = device.run_once()
    assert outcome.kind is OutcomeKind.INSTALLED, outcome.message()
    # Both reached the device; only the one answering its request counted.
    kinds = sorted(type(seen.get(timeout=10)).__name__ for _ in range(2))
    assert kinds == ["UpToDate", "UpdateOffer"]


def test_only_offers_for_other_requests_time_out_then_are_refused(
    make_device: DeviceFactory, responder: OfferResponder, world: World
) -> None:
    """Genuine offers sealed for another request (replays) never answer ours: announce()
    times out, and run_once() refuses what came instead with wrong-request."""
    responder.answer = lambda device_id, a: [
        offer_of(world, "build-1002", device_id, "not-" + (a.request_id or "")).to_bytes()
    ]
    device = make_device(timeout=1.5)
    with pytest.raises(OfferTimeout, match="no offer for request r-1") as raised:
        device.announce("r-1")
    # One stray per announcement sent (the device re-sends once halfway through the wait).
    assert {o.request_id for o in raised.value.strays} == {"not-r-1"}
    outcome = device.run_once()
    assert outcome.kind is OutcomeKind.REJECTED
    assert outcome.reason == "wrong-request"
    assert responder.wait_statuses(device.config.device_id) == ["failed"]


def test_nobody_answering_is_a_timeout(
    make_device: DeviceFactory, responder: OfferResponder
) -> None:
    responder.answer = lambda device_id, a: []
    outcome = make_device(timeout=1).run_once()
    assert outcome.kind is OutcomeKind.TIMEOUT
    assert outcome.reason == "timeout"


def test_an_unreadable_offer_for_our_request_fails_fast(
    make_device: DeviceFactory, responder: OfferResponder, world: World
) -> None:
    responder.answer = lambda device_id, a: [
        json.dumps({"status": "update-available", "request_id": a.request_id, "size": "x"}).encode()
    ]
    device = make_device()
    outcome = device.run_once()
    assert outcome.kind is OutcomeKind.REJECTED
    assert outcome.reason == "malformed-offer"
    assert responder.last_status(device.config.device_id).state == "failed"


# --- tampered offers ------------------------------------------------------------------------------


def _field(name: str, value: Any) -> Any:
    return lambda offer, world: {name: value}


def _other_release(name: str, build_id: str) -> Any:
    return lambda offer, world: {name: getattr(world.release(build_id), name)}


def _manifest_bytes(offer: UpdateOffer, world: World) -> dict[str, Any]:
    # Same JSON meaning, one more space: the signatures and the envelope cover the bytes.
    return {"manifest": offer.manifest.replace(":", ": ", 1)}


def _manifest_version(offer: UpdateOffer, world: World) -> dict[str, Any]:
    return {"manifest": offer.manifest.replace('"version":"1.2.0"', '"version":"1.9.0"')}


def _envelope_expiry(offer: UpdateOffer, world: World) -> dict[str, Any]:
    # Stretch the validity window, keep everything else: the signature no longer matches.
    envelope = json.loads(offer.envelope or "{}")
    envelope["expires_at"] += 10 * 365 * 24 * 3600
    return {"envelope": json.dumps(envelope, sort_keys=True, separators=(",", ":"))}


def _envelope_of_another_request(offer: UpdateOffer, world: World) -> dict[str, Any]:
    # A genuine signature, but over another offer's envelope.
    other = world.offer("build-1002", offer.device_id, "another-request")
    return {"envelope_signature": other.envelope_signature}


def _tamper_cases() -> list[Any]:
    """Every field of a sealed offer, changed one at a time: (change, expected reason).

    The reasons follow the check order of issue 3: envelope signature, device, nonce,
    expiry, manifest hash, manifest signature, fields against the manifest, checksum
    signature.
    """
    return [
        pytest.param(_envelope_expiry, "envelope-signature", id="envelope"),
        pytest.param(_envelope_of_another_request, "envelope-signature", id="envelope_signature"),
        pytest.param(_field("device_id", "someone-else"), "wrong-device", id="device_id"),
        pytest.param(
            _field("request_id", "someone-elses-request"), "wrong-request", id="request_id"
        ),
        pytest.param(_manifest_bytes, "manifest-hash", id="manifest-bytes"),
        pytest.param(_manifest_version, "manifest-hash", id="manifest-version"),
        pytest.param(
            _other_release("manifest_signature", "build-1000"),
            "manifest-signature",
            id="manifest_signature",
        ),
        pytest.param(_field("checksum", "0" * 64), "manifest-mismatch", id="checksum"),
        pytest.param(
            _other_release("signature", "build-1000"), "checksum-signature", id="signature"
        ),
        pytest.param(_field("version", "1.9.0"), "manifest-mismatch", id="version"),
        pytest.param(_field("size", 300_001), "manifest-mismatch", id="size"),
        pytest.param(_field("build_id", "build-9999"), "manifest-mismatch", id="build_id"),
        pytest.param(_field("key_id", "0" * 16), "manifest-mismatch", id="key_id"),
        pytest.param(_field("envelope", None), "envelope-signature", id="no-envelope"),
    ]


def _unsealed_tamper_cases() -> list[Any]:
    """Seed-era offers (no envelope, --insecure-unsealed): the release signatures still hold."""
    return [
        pytest.param(_manifest_bytes, "manifest-signature", id="manifest-bytes"),
        pytest.param(_manifest_version, "manifest-signature", id="manifest-version"),
        pytest.param(_field("checksum", "0" * 64), "manifest-mismatch", id="checksum"),
        pytest.param(
            _other_release("signature", "build-1000"), "checksum-signature", id="signature"
        ),
        pytest.param(_field("device_id", "someone-else"), "wrong-device", id="device_id"),
    ]


@pytest.mark.parametrize(("change", "reason"), _tamper_cases())
def test_tampered_offer_is_refused_with_its_reason(
    make_device: DeviceFactory,
    responder: OfferResponder,
    world: World,
    http_server: PackageServer,
    change: Any,
    reason: str,
) -> None:
    def tamper(device_id: str, announcement: Announcement) -> list[bytes]:
        offer = offer_of(world, "build-1002", device_id, announcement.request_id)
        return [tampered(offer, **change(offer, world))]

    responder.answer = tamper
    assert_refused(make_device(), responder, http_server, reason, expected_states=["failed"])


@pytest.mark.parametrize(("change", "reason"), _unsealed_tamper_cases())
def test_tampered_unsealed_offer_is_refused_in_insecure_mode(
    make_device: DeviceFactory,
    responder: OfferResponder,
    world: World,
    http_server: PackageServer,
    change: Any,
    reason: str,
) -> None:
    def tamper(device_id: str, announcement: Announcement) -> list[bytes]:
        offer = OfferBuilder().update_offer(
            world.release("build-1002"), device_id, announcement.request_id
        )
        return [tampered(offer, **change(offer, world))]

    responder.answer = tamper
    device = make_device(insecure_unsealed=True)
    assert_refused(device, responder, http_server, reason, expected_states=["failed"])


def test_insecure_mode_installs_a_seed_era_unsealed_offer(
    make_device: DeviceFactory, responder: OfferResponder, world: World
) -> None:
    responder.answer = lambda device_id, a: [
        OfferBuilder().for_announcement(responder.catalog, device_id, a).to_bytes()
    ]
    outcome = make_device(insecure_unsealed=True).run_once()
    assert outcome.kind is OutcomeKind.INSTALLED, outcome.message()


def assert_refused(
    device: DeviceClient,
    responder: OfferResponder,
    http_server: PackageServer,
    reason: str,
    expected_states: list[str],
) -> None:
    requests_before = len(http_server.package_requests())
    outcome = device.run_once()
    me = device.config.device_id
    assert outcome.kind is OutcomeKind.REJECTED, outcome.message()
    assert outcome.reason == reason
    assert (outcome.detail or "").startswith(f"{reason}: ")
    assert reason in outcome.message()
    assert (device.build_id, device.version) == ("build-1001", "1.1.0")
    assert installed_files(device.install_dir()) == []
    assert responder.wait_statuses(me) == expected_states
    last = responder.last_status(me)
    assert (last.detail or "").startswith(f"{reason}: ")
    if expected_states == ["failed"]:
        # Refused before anything was downloaded.
        assert len(http_server.package_requests()) == requests_before


def _offer_release(build_id: str) -> Any:
    def answer_with(responder: OfferResponder, world: World) -> Any:
        return lambda device_id, a: [offer_of(world, build_id, device_id, a.request_id).to_bytes()]

    return answer_with


@pytest.mark.parametrize(
    ("build_id", "overrides", "reason"),
    [
        pytest.param("build-2002", {}, "manifest-signature", id="signed-by-another-key"),
        pytest.param("build-1000", {}, "rollback", id="rollback-older"),
        pytest.param("build-1001", {}, "rollback", id="rollback-same"),
        pytest.param("build-1003-b", {"hardware": "board-a"}, "hardware-mismatch", id="hardware"),
        pytest.param("build-1003-b", {}, "hardware-mismatch", id="hardware-device-names-none"),
    ],
)
def test_genuine_but_wrong_release_is_refused(
    make_device: DeviceFactory,
    responder: OfferResponder,
    world: World,
    http_server: PackageServer,
    build_id: str,
    overrides: dict[str, Any],
    reason: str,
) -> None:
    responder.answer = _offer_release(build_id)(responder, world)
    assert_refused(make_device(**overrides), responder, http_server, reason, ["failed"])


def test_matching_hardware_is_installed(
    make_device: DeviceFactory, responder: OfferResponder, world: World
) -> None:
    responder.answer = _offer_release("build-1003-b")(responder, world)
    outcome = make_device(hardware="board-b").run_once()
    assert outcome.kind is OutcomeKind.INSTALLED, outcome.message()


# --- tampered packages -------------------------------------------------------------------------


def _serve_elsewhere(
    responder: OfferResponder, world: World, http_server: PackageServer, body: bytes, **kw: Any
) -> None:
    """Offer build-1002 genuinely, but with its (unsigned) url pointing at ``body``."""
    path = f"/mirror/{uuid.uuid4().hex}.zip"
    http_server.add(path, body, **kw)
    responder.answer = lambda device_id, a: [
        tampered(offer_of(world, "build-1002", device_id, a.request_id), url=path)
    ]


@pytest.mark.parametrize("content_length", [True, False], ids=["with-length", "no-length"])
def test_server_sending_more_than_signed_is_cut_off(
    make_device: DeviceFactory,
    responder: OfferResponder,
    world: World,
    http_server: PackageServer,
    content_length: bool,
) -> None:
    body = world.packages["build-1002"].body + b"\0" * 100_000
    _serve_elsewhere(responder, world, http_server, body, content_length=content_length)
    assert_refused(
        make_device(), responder, http_server, "size-exceeded", ["downloading", "failed"]
    )


def test_corrupted_package_fails_the_checksum(
    make_device: DeviceFactory, responder: OfferResponder, world: World, http_server: PackageServer
) -> None:
    body = bytearray(world.packages["build-1002"].body)
    body[150_000] ^= 0x01
    _serve_elsewhere(responder, world, http_server, bytes(body))
    assert_refused(
        make_device(),
        responder,
        http_server,
        "checksum-mismatch",
        ["downloading", "verifying", "failed"],
    )


def test_short_package_fails_the_size(
    make_device: DeviceFactory, responder: OfferResponder, world: World, http_server: PackageServer
) -> None:
    body = world.packages["build-1002"].body[:-1]
    _serve_elsewhere(responder, world, http_server, body)
    assert_refused(
        make_device(),
        responder,
        http_server,
        "size-mismatch",
        ["downloading", "verifying", "failed"],
    )


def test_missing_package_is_a_download_failure(
    make_device: DeviceFactory, responder: OfferResponder, world: World
) -> None:
    responder.answer = lambda device_id, a: [
        tampered(offer_of(world, "build-1002", device_id, a.request_id), url="/packages/gone.zip")
    ]
    device = make_device()
    outcome = device.run_once()
    assert outcome.kind is OutcomeKind.DOWNLOAD_FAILED
    assert outcome.reason == "download-failed"
    assert "HTTP 404" in (outcome.detail or "")
    assert responder.wait_statuses(device.config.device_id) == ["downloading", "failed"]
    assert installed_files(device.install_dir()) == []


def test_non_http_package_url_is_refused(
    make_device: DeviceFactory, responder: OfferResponder, world: World
) -> None:
    responder.answer = lambda device_id, a: [
        tampered(offer_of(world, "build-1002", device_id, a.request_id), url="file:///etc/passwd")
    ]
    outcome = make_device().run_once()
    assert outcome.kind is OutcomeKind.DOWNLOAD_FAILED
    assert "http or https" in (outcome.detail or "")


# --- connection behaviour -----------------------------------------------------------------------


def test_sets_tcp_nodelay_on_its_mqtt_socket(make_device: DeviceFactory) -> None:
    device = make_device()
    sock = device.paho_client.socket()
    assert isinstance(sock, socket.socket)
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_unreachable_broker_is_a_connect_failure(make_device: DeviceFactory) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connection refused
        device = make_device(connect=False, broker_url=f"mqtt://127.0.0.1:{port}")
        outcome = device.run_once()
    assert outcome.kind is OutcomeKind.CONNECT_FAILED
    assert f"127.0.0.1:{port}" in (outcome.detail or "")


def test_persistent_session_receives_an_offer_published_while_offline(
    make_device: DeviceFactory, responder: OfferResponder, world: World
) -> None:
    first = make_device(persistent_session=True)
    me = first.config.device_id
    first.close()
    offer = offer_of(world, "build-1002", me, None)
    responder.publish_offer(me, offer.to_bytes())

    received: queue.Queue[Offer] = queue.Queue()
    again = make_device(connect=False, persistent_session=True)
    again.on_offer = received.put
    again.connect()
    pushed = received.get(timeout=10)
    assert isinstance(pushed, UpdateOffer)
    result = again.install(pushed)
    assert result.ok, result.detail
    assert responder.wait_statuses(me) == FULL_RUN


def test_many_devices_share_one_process_and_one_key(
    device_config: DeviceConfig, responder: OfferResponder, world: World, tmp_path: Path
) -> None:
    verifier = load_verifier(world.public_key_path)
    devices = [
        DeviceClient(
            replace(
                device_config,
                device_id=f"fleet-{i:03d}-{uuid.uuid4().hex[:6]}",
                install_dir=tmp_path / f"d{i}",
            ),
            verifier=verifier,
        )
        for i in range(30)
    ]
    outcomes: dict[str, OutcomeKind] = {}
    lock = threading.Lock()

    def run(device: DeviceClient) -> None:
        with device:
            kind = device.run_once().kind
        with lock:
            outcomes[device.config.device_id] = kind

    threads = [threading.Thread(target=run, args=(d,)) for d in devices]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert list(outcomes.values()) == [OutcomeKind.INSTALLED] * len(devices)
    for device in devices:
        assert responder.wait_statuses(device.config.device_id) == FULL_RUN


def test_broker_credentials_are_used_and_a_refusal_is_a_connect_failure(
    tmp_path: Path, device_config: DeviceConfig
) -> None:
    password_file = tmp_path / "passwd"
    add_mosquitto_user(password_file, device_config.device_id, "right-password")
    broker = start_mosquitto(
        tmp_path / "locked",
        extra_options=["allow_anonymous false", f"password_file {password_file}"],
    )
    try:
        config = replace(device_config, broker_url=broker.url, timeout=5)
        anonymous = DeviceClient(config).run_once()
        assert anonymous.kind is OutcomeKind.CONNECT_FAILED
        assert "refused the connection" in (anonymous.detail or "")

        wrong = DeviceClient(
            replace(config, mqtt_username=config.device_id, mqtt_password="wrong")
        ).run_once()
        assert wrong.kind is OutcomeKind.CONNECT_FAILED

        right = replace(config, mqtt_username=config.device_id, mqtt_password="right-password")
        with DeviceClient(right) as device:
            assert device.connected
        # Credentials in the URL work too.
        in_url = replace(
            config, broker_url=f"mqtt://{config.device_id}:right-password@127.0.0.1:{broker.port}"
        )
        with DeviceClient(in_url) as device:
            assert device.connected
    finally:
        broker.stop()


def test_close_fails_pending_requests_instead_of_leaving_them_hanging(
    make_device: DeviceFactory, responder: OfferResponder
) -> None:
    responder.answer = lambda device_id, a: []
    device = make_device()
    _, future = device.request_offer()
    device.close()
    assert isinstance(future.exception(timeout=10), NotConnected)
    with pytest.raises(NotConnected):
        device.request_offer()


def test_broker_password_never_appears_in_messages() -> None:
    from ota_core.device.client import DeviceConfig

    config = DeviceConfig(
        device_id="d", build_id="b", version="1.0", broker_url="mqtt://d:s3cret-pw@127.0.0.1:1"
    )
    assert "s3cret-pw" not in config.broker_for_messages
    assert config.broker_for_messages == "mqtt://d:***@127.0.0.1:1"


def test_an_unanswered_announcement_is_sent_once_more_with_the_same_request_id(
    mosquitto: Any, tmp_path: Path, release_key_pems: Any
) -> None:
    """A bridge replica killed while holding an announcement loses it; the device re-sends."""
    prefix = f"resend{uuid.uuid4().hex[:8]}/v1"
    (tmp_path / "public.pem").write_bytes(release_key_pems.public_pem)
    probe = MqttProbe(mosquitto.url)
    probe.subscribe(f"{prefix}/devices/+/announce")
    config = DeviceConfig(
        device_id="resend-1",
        build_id="b1",
        version="1.0.0",
        broker_url=mosquitto.url,
        public_key_path=tmp_path / "public.pem",
        topic_prefix=prefix,
        timeout=4.0,
        insecure_unsealed=True,
    )
    with DeviceClient(config) as device:
        holder: dict[str, Any] = {}

        def answer_second() -> None:
            first = json.loads(probe.expect(10).payload)  # dropped, as by a dead replica
            second = json.loads(probe.expect(10).payload)
            holder["ids"] = (first["request_id"], second["request_id"])
            reply = ErrorReply(
                device_id="resend-1",
                request_id=second["request_id"],
                error="unknown-build",
                detail="answered the resend",
            )
            probe.publish(f"{prefix}/devices/resend-1/offer", reply.to_bytes(), qos=1)

        responder = threading.Thread(target=answer_second)
        responder.start()
        offer = device.announce()
        responder.join(10)
    probe.close()
    first_id, second_id = holder["ids"]
    assert first_id == second_id == offer.request_id
    assert parse_offer(offer.to_bytes()).status == "error"
