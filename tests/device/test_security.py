"""Issue 3 end to end: replays, offers for other devices, expiry, offer keys (pinned,
certified by the release key from GET /keys, rotated), forged replies.

Real Mosquitto, real HTTP (the test package server, and the real HTTP side for the
rotation), offers sealed by the real OfferBuilder with real offer keys.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ota_core.device import DeviceClient, DeviceConfig, OfferKeyring, OutcomeKind
from ota_core.envelope import OfferSigner
from ota_core.errors import KeyMaterialError, UnknownBuild
from ota_core.keyfiles import ensure_offer_key, load_offer_signer, load_signer, rotate_offer_key
from ota_core.models import Announcement, UpToDate
from ota_core.offers import OfferBuilder
from tests.device.harness import (
    DeviceFactory,
    OfferResponder,
    PackageServer,
    World,
    keys_body,
    tampered,
)
from tests.http_files.live_server import start_server_factory
from tests.support import MosquittoServer, OtaDirs

FULL_RUN = ["downloading", "verifying", "installing", "installed"]
DAY = 24 * 3600


def keys_requests(http_server: PackageServer) -> int:
    return sum(1 for path in http_server.requests if path == "/keys")


# --- replays and other devices' offers ------------------------------------------------------


def test_an_offer_captured_earlier_and_replayed_is_refused_as_wrong_request(
    make_device: DeviceFactory, responder: OfferResponder, world: World
) -> None:
    captured: list[bytes] = []

    def capture_then_replay(device_id: str, a: Announcement) -> list[bytes]:
        if a.request_id == "r-first":
            # The genuine answer to the first request (and to its re-send) is
            # intercepted, never delivered...
            if not captured:
                captured.append(world.offer("build-1002", device_id, a.request_id).to_bytes())
            return []
        return [captured[0]]  # ...and replayed in answer to the next one.

    responder.answer = capture_then_replay
    device = make_device(timeout=1.5)
    first = device.run_once(request_id="r-first")
    assert first.kind is OutcomeKind.TIMEOUT
    second = device.run_once(request_id="r-second")
    assert second.kind is OutcomeKind.REJECTED, second.message()
    assert second.reason == "wrong-request"
    assert (second.detail or "").startswith("wrong-request: ")
    assert (device.build_id, device.version) == ("build-1001", "1.1.0")
    status = responder.last_status(device.config.device_id)
    assert status.state == "failed"
    assert (status.detail or "").startswith("wrong-request: ")
    assert status.request_id == "r-second"


def test_a_replay_next_to_the_genuine_answer_does_not_stop_the_install(
    make_device: DeviceFactory, responder: OfferResponder, world: World
) -> None:
    def replay_first(device_id: str, a: Announcement) -> list[bytes]:
        old = world.offer("build-1002", device_id, "an-old-request").to_bytes()
        return [old, *responder.policy_answer(device_id, a)]

    responder.answer = replay_first
    outcome = make_device().run_once()
    assert outcome.kind is OutcomeKind.INSTALLED, outcome.message()


@pytest.mark.parametrize("request_id", ["as-captured", "rewritten"])
def test_device_a_offer_delivered_to_device_b_is_refused_as_wrong_device(
    make_device: DeviceFactory,
    responder: OfferResponder,
    world: World,
    http_server: PackageServer,
    request_id: str,
) -> None:
    device_a = f"dev-a-{uuid.uuid4().hex[:8]}"

    def a_offer(device_id: str, announcement: Announcement) -> list[bytes]:
        offer = world.offer("build-1002", device_a, "request-of-a")
        if request_id == "rewritten":  # the attacker also puts in B's request id
            return [tampered(offer, request_id=announcement.request_id)]
        return [offer.to_bytes()]

    responder.answer = a_offer
    device_b = make_device(timeout=1.5)
    before = len(http_server.package_requests())
    outcome = device_b.run_once()
    assert outcome.kind is OutcomeKind.REJECTED, outcome.message()
    assert outcome.reason == "wrong-device"
    assert responder.wait_statuses(device_b.config.device_id) == ["failed"]
    assert len(http_server.package_requests()) == before


# --- expiry ---------------------------------------------------------------------------------------


def _from_the_past(world: World, seconds_ago: int) -> OfferBuilder:
    past = time.time() - seconds_ago
    return OfferBuilder(offer_signer=world.offer_signer, clock=lambda: past)


def test_an_expired_offer_is_refused_then_the_device_announces_again_and_installs(
    make_device: DeviceFactory, responder: OfferResponder, world: World
) -> None:
    stale = _from_the_past(world, 3 * DAY)  # default ttl is one day

    def stale_first(device_id: str, a: Announcement) -> list[bytes]:
        builder = stale if len(responder.announcements[device_id]) == 1 else world.builder
        return [builder.for_announcement(responder.catalog, device_id, a).to_bytes()]

    responder.answer = stale_first
    device = make_device()
    outcome = device.run_once()
    me = device.config.device_id
    assert outcome.kind is OutcomeKind.INSTALLED, outcome.message()
    assert outcome.retried == "expired"
    first, second = responder.announcements[me]
    assert first.request_id != second.request_id  # a fresh request id
    # The stale offer was refused quietly (the device asked again); the fresh one installed.
    assert responder.wait_statuses(me) == FULL_RUN
    assert {s.request_id for s in responder.statuses[me]} == {second.request_id}


def test_offers_that_stay_expired_are_refused_after_one_more_try(
    make_device: DeviceFactory, responder: OfferResponder, world: World
) -> None:
    stale = _from_the_past(world, 3 * DAY)
    responder.answer = lambda device_id, a: [
        stale.for_announcement(responder.catalog, device_id, a).to_bytes()
    ]
    device = make_device()
    outcome = device.run_once()
    assert outcome.kind is OutcomeKind.REJECTED
    assert outcome.reason == "expired"
    assert outcome.retried == "expired"
    assert len(responder.announcements[device.config.device_id]) == 2
    assert responder.wait_statuses(device.config.device_id) == ["failed"]


def test_an_expired_up_to_date_is_asked_again_too(
    make_device: DeviceFactory, responder: OfferResponder, world: World
) -> None:
    stale = _from_the_past(world, 3 * DAY)

    def stale_first(device_id: str, a: Announcement) -> list[bytes]:
        builder = stale if len(responder.announcements[device_id]) == 1 else world.builder
        return [builder.for_announcement(responder.catalog, device_id, a).to_bytes()]

    responder.answer = stale_first
    outcome = make_device(build_id="build-1002", version="1.2.0").run_once()
    assert outcome.kind is OutcomeKind.UP_TO_DATE
    assert outcome.retried == "expired"


# --- forged replies: a freeze attack ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["up-to-date", "error"])
def test_forged_replies_are_refused_and_reported(
    make_device: DeviceFactory, responder: OfferResponder, world: World, kind: str
) -> None:
    intruder = OfferBuilder(offer_signer=OfferSigner.generate())

    def forged(device_id: str, a: Announcement) -> list[bytes]:
        if kind == "up-to-date":
            reply = UpToDate(device_id=device_id, request_id=a.request_id, build_id=a.build_id)
            return [intruder.seal(reply).to_bytes()]
        return [intruder.error(device_id, a.request_id, UnknownBuild("go away")).to_bytes()]

    responder.answer = forged
    device = make_device()
    outcome = device.run_once()
    assert outcome.kind is OutcomeKind.REJECTED, outcome.message()
    assert outcome.reason == "envelope-signature"
    status = responder.last_status(device.config.device_id)
    assert status.state == "failed"
    assert status.build_id == "build-1001"
    assert (status.detail or "").startswith("envelope-signature: ")


def test_a_genuine_up_to_date_for_another_request_is_refused(
    make_device: DeviceFactory, responder: OfferResponder, world: World
) -> None:
    def old_reply(device_id: str, a: Announcement) -> list[bytes]:
        reply = UpToDate(device_id=device_id, request_id=a.request_id, build_id=a.build_id)
        sealed = world.builder.seal(reply.model_copy(update={"request_id": "old-request"}))
        return [tampered_reply(sealed.to_bytes(), request_id=a.request_id)]

    responder.answer = old_reply
    outcome = make_device().run_once()
    assert outcome.kind is OutcomeKind.REJECTED
    assert outcome.reason == "wrong-request"


def tampered_reply(payload: bytes, **changes: Any) -> bytes:
    data = json.loads(payload)
    data.update(changes)
    return json.dumps(data).encode()


# --- offer keys -----------------------------------------------------------------------------------


def test_an_offer_sealed_by_an_unknown_key_is_refused_after_one_refresh(
    make_device: DeviceFactory, responder: OfferResponder, world: World, http_server: PackageServer
) -> None:
    intruder = OfferBuilder(offer_signer=OfferSigner.generate())
    responder.answer = lambda device_id, a: [
        intruder.for_announcement(responder.catalog, device_id, a).to_bytes()
    ]
    device = make_device()
    fetched = keys_requests(http_server)
    outcome = device.run_once()
    assert outcome.kind is OutcomeKind.REJECTED
    assert outcome.reason == "envelope-signature"
    assert "is not trusted" in (outcome.detail or "")
    assert keys_requests(http_server) == fetched + 1  # the key list was fetched once more
    # The same unknown key again, at once: no new fetch (a junk flood is not a request flood).
    again = device.run_once()
    assert again.reason == "envelope-signature"
    assert keys_requests(http_server) == fetched + 1
    assert responder.wait_final_count(device.config.device_id, 2) == ["failed", "failed"]


def test_keys_without_a_valid_release_key_certificate_are_not_trusted(
    make_device: DeviceFactory, responder: OfferResponder, world: World, http_server: PackageServer
) -> None:
    """Someone serving /keys (plain HTTP) adds a key of their own: its certificate is not
    the release key's signature, so the device ignores it."""
    intruder = OfferSigner.generate()
    body = json.loads(world.keys_body())
    genuine = body["offer_keys"][0]
    body["offer_keys"].append(
        {**genuine, "key_id": intruder.key_id, "public_key": intruder.public_hex}
    )
    path = f"/evil-keys-{uuid.uuid4().hex[:6]}"
    http_server.add(path, json.dumps(body).encode())
    builder = OfferBuilder(offer_signer=intruder)
    responder.answer = lambda device_id, a: [
        builder.for_announcement(responder.catalog, device_id, a).to_bytes()
    ]
    device = make_device(keys_url=http_server.url + path)
    assert device.keyring is not None
    outcome = device.run_once()
    assert outcome.reason == "envelope-signature", outcome.message()
    assert device.keyring.key_ids() == [world.offer_signer.key_id]


def test_keys_list_unreachable_is_named_in_the_refusal(
    make_device: DeviceFactory, responder: OfferResponder
) -> None:
    device = make_device(keys_url="http://127.0.0.1:9/keys")
    outcome = device.run_once()
    assert outcome.reason == "envelope-signature"
    assert "fetching http://127.0.0.1:9/keys failed" in (outcome.detail or "")


@pytest.mark.parametrize("shape", ["offer-keys.json", "GET-keys"])
def test_pinned_offer_keys_from_either_file_shape(
    make_device: DeviceFactory,
    responder: OfferResponder,
    world: World,
    http_server: PackageServer,
    tmp_path: Path,
    shape: str,
) -> None:
    if shape == "offer-keys.json":
        pinned = world.keys_dir / "offer-keys.json"
    else:
        pinned = tmp_path / "keys.json"
        pinned.write_bytes(world.keys_body())
    fetched = keys_requests(http_server)
    device = make_device(offer_keys_path=pinned, keys_url="http://127.0.0.1:9/never")
    outcome = device.run_once()
    assert outcome.kind is OutcomeKind.INSTALLED, outcome.message()
    assert keys_requests(http_server) == fetched  # pinned: nothing fetched


def test_pinned_keys_are_never_refreshed(
    make_device: DeviceFactory, responder: OfferResponder, world: World, tmp_path: Path
) -> None:
    other = OfferSigner.generate()
    pinned = tmp_path / "pinned.json"
    pinned.write_text(
        json.dumps(
            {"keys": [{"key_id": other.key_id, "public_key": other.public_hex, "not_after": 2**40}]}
        )
    )
    device = make_device(offer_keys_path=pinned)
    outcome = device.run_once()  # the responder seals with the world's key: not pinned
    assert outcome.reason == "envelope-signature"
    assert "is not trusted" in (outcome.detail or "")


def test_a_pinned_key_past_its_not_after_is_refused(
    make_device: DeviceFactory, responder: OfferResponder, world: World, tmp_path: Path
) -> None:
    data = json.loads((world.keys_dir / "offer-keys.json").read_text())
    for entry in data["keys"]:
        entry["not_after"] = int(time.time()) - 3600  # pinned as listed: no certificate check
    pinned = tmp_path / "expired-keys.json"
    pinned.write_text(json.dumps(data))
    outcome = make_device(offer_keys_path=pinned).run_once()
    assert outcome.reason == "envelope-signature"
    assert "has expired" in (outcome.detail or "")


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("not json", "not valid JSON"),
        ('{"something": []}', "offer_keys"),
        ('{"keys": []}', "lists no offer keys"),
        (
            '{"keys": [{"key_id": "00000000000000aa", "public_key": "'
            + "ab" * 32
            + '", "not_after": 1}]}',
            "does not match",
        ),
    ],
)
def test_a_bad_pinned_keyring_is_a_configuration_error(
    tmp_path: Path, content: str, words: str
) -> None:
    path = tmp_path / "keys.json"
    path.write_text(content)
    with pytest.raises(KeyMaterialError, match=words):
        OfferKeyring.pinned(path)


# --- rotation through the real HTTP side --------------------------------------------------------


@pytest.fixture
def real_http(ota_dirs: OtaDirs) -> Iterator[Any]:
    ensure_offer_key(ota_dirs.keys_dir, load_signer(ota_dirs.keys_dir))
    yield from start_server_factory(ota_dirs)


def test_a_rotated_offer_key_is_learned_from_get_keys(
    real_http: Any, ota_dirs: OtaDirs, mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    """The real HTTP side serves /keys and the package; after `ota keys rotate` the bridge
    seals with the new key, and a device that pinned only public.pem learns it."""
    running = real_http()
    running.publish("build-7002", "7.2.0", b"firmware 7.2.0" * 1000)
    catalog = running.services.releases.catalog()
    release_signer = load_signer(ota_dirs.keys_dir)
    first_key = load_offer_signer(ota_dirs.keys_dir)
    assert first_key is not None

    prefix = f"rotation-{uuid.uuid4().hex[:6]}/v1"
    responder = OfferResponder(
        mosquitto.url, catalog, OfferBuilder(offer_signer=first_key), prefix=prefix
    )
    config = DeviceConfig(
        device_id=f"rot-{uuid.uuid4().hex[:8]}",
        build_id="build-7001",
        version="7.1.0",
        broker_url=mosquitto.url,
        http_base_url=running.url,
        public_key_path=ota_dirs.public_key_path,
        install_dir=tmp_path / "installed",
        topic_prefix=prefix,
    )
    try:
        with DeviceClient(config) as device:
            assert device.keyring is not None
            assert device.keyring.key_ids() == [first_key.key_id]
            new_id, retired = rotate_offer_key(ota_dirs.keys_dir, release_signer, 3600)
            assert retired == [first_key.key_id]
            new_key = load_offer_signer(ota_dirs.keys_dir)
            assert new_key is not None and new_key.key_id == new_id
            responder.builder = OfferBuilder(offer_signer=new_key)
            outcome = device.run_once()
            assert outcome.kind is OutcomeKind.INSTALLED, outcome.message()
            # Both listed by the real /keys: the new one, and the old one in its grace period.
            assert device.keyring.key_ids() == sorted([first_key.key_id, new_id])
    finally:
        responder.close()


def test_keys_body_matches_the_real_endpoint(real_http: Any, ota_dirs: OtaDirs) -> None:
    """The test server's /keys (harness.keys_body) has the real endpoint's shape."""
    running = real_http()
    real = running.get("/keys").json()
    ours = json.loads(keys_body(ota_dirs.keys_dir, load_signer(ota_dirs.keys_dir)))
    assert real == ours


def test_made_up_key_ids_do_not_turn_into_a_request_flood(
    make_device: DeviceFactory, responder: OfferResponder, http_server: PackageServer
) -> None:
    """Each offer names a different unknown key: one refresh, then none for a while."""
    responder.answer = lambda device_id, a: [
        OfferBuilder(offer_signer=OfferSigner.generate())
        .for_announcement(responder.catalog, device_id, a)
        .to_bytes()
    ]
    device = make_device()
    fetched = keys_requests(http_server)
    for _ in range(4):
        assert device.run_once().reason == "envelope-signature"
    assert keys_requests(http_server) == fetched + 1
