"""BridgeHandler: the sans-IO core. No broker; every input ends in a result, never a raise."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker_bridge.handler import BridgeHandler, HandlerResult, Outcome
from ota_core.catalog import Catalog, sign_release
from ota_core.envelope import OfferSigner, TrustedOfferKeys
from ota_core.models import ErrorReply, UpdateOffer, UpToDate, parse_offer
from ota_core.offers import OfferBuilder
from ota_core.signing import ReleaseSigner, generate_release_key
from ota_core.store.devices import AnnouncementSeen, StatusSeen
from ota_core.topics import TopicScheme
from ota_core.verify import OfferChecker

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
MAX_BYTES = 4096
SIGNER = ReleaseSigner(generate_release_key())
ANNOUNCE = "ota/v1/devices/dev-1/announce"
STATUS = "ota/v1/devices/dev-1/status"
OFFER = "ota/v1/devices/dev-1/offer"


def release(build_id: str, version: str, counter: int, **extra: str):  # type: ignore[no-untyped-def]
    return sign_release(
        SIGNER,
        build_id=build_id,
        version=version,
        filename=f"fw-{version}.bin",
        size=1000 + counter,
        sha256=f"{counter:02x}" * 32,
        release_counter=counter,
        issued_at=NOW,
        **extra,
    )


CATALOG = Catalog.of(
    [
        release("build-100", "1.0.0", 1),
        release("build-190", "1.9.0", 2),
        release("build-1100", "1.10.0", 3),
        release("build-2000", "2.0.0", 4, hardware="board-b"),
    ],
    revision=3,
)


def make_handler(catalog: Catalog = CATALOG, max_bytes: int = MAX_BYTES) -> BridgeHandler:
    return BridgeHandler(TopicScheme(), OfferBuilder(), lambda: catalog, max_bytes)


HANDLER = make_handler()


def announce(payload: bytes | dict[str, object], topic: str = ANNOUNCE) -> HandlerResult:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return HANDLER.handle(topic, raw, NOW)


def error_of(result: HandlerResult) -> ErrorReply:
    assert result.outcome is Outcome.ANNOUNCE_REJECTED
    assert result.reply is not None and result.reply.topic == OFFER
    reply = parse_offer(result.reply.payload)
    assert isinstance(reply, ErrorReply)
    assert reply.device_id == "dev-1"
    assert reply.error == result.error
    return reply


# -- announcements answered --------------------------------------------------------


def test_known_old_build_gets_newest_release() -> None:
    result = announce({"build_id": "build-100", "request_id": "req-1"})
    assert result.outcome is Outcome.UPDATE_OFFERED
    assert result.reply is not None and result.reply.topic == OFFER
    offer = parse_offer(result.reply.payload)
    assert isinstance(offer, UpdateOffer)
    newest = CATALOG.by_build["build-1100"]  # 1.10.0 > 1.9.0; 2.0.0 needs board-b
    assert (offer.build_id, offer.version, offer.request_id) == ("build-1100", "1.10.0", "req-1")
    assert (offer.checksum, offer.signature) == (newest.sha256, newest.signature)
    assert offer.manifest == newest.manifest
    assert offer.manifest_signature == newest.manifest_signature
    assert offer.url == "/packages/fw-1.10.0.bin"
    assert result.build_id == "build-1100"
    assert result.request_id == "req-1"
    assert isinstance(result.event, AnnouncementSeen)
    assert result.event.device_id == "dev-1"
    assert result.event.offered_build == "build-1100"
    assert result.event.announcement.build_id == "build-100"
    assert result.event.at == NOW
    assert result.error is None


def test_hardware_is_passed_to_the_policy() -> None:
    result = announce({"build_id": "build-100", "hardware": "board-b"})
    assert result.build_id == "build-2000"


def test_newest_build_is_up_to_date() -> None:
    result = announce({"build_id": "build-1100", "request_id": "r"})
    assert result.outcome is Outcome.UP_TO_DATE
    assert result.reply is not None
    reply = parse_offer(result.reply.payload)
    assert isinstance(reply, UpToDate)
    assert (reply.build_id, reply.version, reply.request_id) == ("build-1100", "1.10.0", "r")
    assert isinstance(result.event, AnnouncementSeen) and result.event.offered_build is None


def test_unknown_build_without_version_is_an_error_but_still_recorded() -> None:
    result = announce({"build_id": "custom-7", "request_id": "abc"})
    reply = error_of(result)
    assert reply.error == "unknown-build"
    assert reply.request_id == "abc"
    # The device is real and told us its build: the registry hears about it.
    assert isinstance(result.event, AnnouncementSeen)
    assert result.event.announcement.build_id == "custom-7"
    assert result.event.offered_build is None


def test_unknown_build_with_version_is_compared_by_version() -> None:
    result = announce({"build_id": "custom-7", "version": "1.9.5"})
    assert result.outcome is Outcome.UPDATE_OFFERED
    assert result.build_id == "build-1100"


def test_payload_may_repeat_its_own_device_id() -> None:
    result = announce({"build_id": "build-100", "device_id": "dev-1"})
    assert result.outcome is Outcome.UPDATE_OFFERED


def test_catalog_is_read_per_message() -> None:
    current = [Catalog()]
    handler = BridgeHandler(TopicScheme(), OfferBuilder(), lambda: current[0], MAX_BYTES)
    payload = b'{"build_id": "build-100"}'
    assert handler.handle(ANNOUNCE, payload, NOW).error == "unknown-build"
    current[0] = CATALOG  # a release was published elsewhere
    assert handler.handle(ANNOUNCE, payload, NOW).outcome is Outcome.UPDATE_OFFERED


def test_custom_prefix_and_package_base_url() -> None:
    handler = BridgeHandler(
        TopicScheme("acme/fleet"), OfferBuilder("https://cdn.example/"), lambda: CATALOG, MAX_BYTES
    )
    result = handler.handle("acme/fleet/devices/d.9/announce", b'{"build_id":"build-100"}', NOW)
    assert result.reply is not None and result.reply.topic == "acme/fleet/devices/d.9/offer"
    offer = parse_offer(result.reply.payload)
    assert isinstance(offer, UpdateOffer)
    assert offer.url == "https://cdn.example/packages/fw-1.10.0.bin"


# -- malformed announcements: always an error reply on the device's offer topic -----------

MALFORMED = {
    "not-json": (b"hello", "bad-request"),
    "empty": (b"", "bad-request"),
    "invalid-utf8": (b'{"build_id": "\xff\xfe"}', "bad-request"),
    "json-array": (b'["build-100"]', "bad-request"),
    "json-string": (b'"build-100"', "bad-request"),
    "json-null": (b"null", "bad-request"),
    "missing-build-id": (b'{"version": "1.0.0"}', "bad-request"),
    "build-id-number": (b'{"build_id": 100}', "bad-request"),
    "build-id-list": (b'{"build_id": ["build-100"]}', "bad-request"),
    "build-id-with-slash": (b'{"build_id": "../../etc"}', "bad-request"),
    "build-id-wildcard": (b'{"build_id": "build-#"}', "bad-request"),
    "version-number": (b'{"build_id": "x", "version": 1.0}', "bad-request"),
    "version-not-a-version": (b'{"build_id": "x", "version": "banana"}', "bad-request"),
    "hardware-object": (b'{"build_id": "build-100", "hardware": {"a": 1}}', "bad-request"),
    "nan": (b'{"build_id": "build-100", "version": NaN}', "bad-request"),
    "huge-integer": (b'{"build_id": ' + b"9" * 4000 + b"}", "bad-request"),
    "huge-float": (b'{"build_id": 1e400}', "bad-request"),
    "deep-nesting": (b"[" * 2000 + b"]" * 2000, "bad-request"),
    "deep-nesting-in-field": (b'{"build_id": ' + b"[" * 2000 + b"]" * 2000 + b"}", "bad-request"),
    "nesting-objects": (b'{"a":' * 600 + b"1" + b"}" * 600, "bad-request"),
    "too-large": (
        b'{"build_id": "build-100", "pad": "' + b"x" * MAX_BYTES + b'"}',
        "payload-too-large",
    ),
    "other-device-id": (b'{"build_id": "build-100", "device_id": "dev-2"}', "bad-request"),
    "device-id-number": (b'{"build_id": "build-100", "device_id": 1}', "bad-request"),
    "truncated": (b'{"build_id": "build-100"', "bad-request"),
    "nul-bytes": (b"\x00" * 64, "bad-request"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_announcement_gets_an_error_reply(name: str) -> None:
    payload, code = MALFORMED[name]
    result = announce(payload)
    reply = error_of(result)
    assert reply.error == code, reply
    assert reply.detail
    assert result.event is None  # nothing usable to record


def test_deep_nesting_is_named_as_such() -> None:
    assert "nested too deeply" in error_of(announce(b"[" * 2000 + b"]" * 2000)).detail


def test_error_detail_never_echoes_the_payload() -> None:
    reply = error_of(announce(b'{"build_id": "<script>alert(1)</script>"}'))
    assert "<script>" not in reply.detail
    assert "build_id" in reply.detail


def test_readable_request_id_is_copied_into_error_replies() -> None:
    reply = error_of(announce({"build_id": 5, "request_id": "req-77"}))
    assert reply.request_id == "req-77"
    other_device = error_of(announce({"request_id": "r-1", "device_id": "dev-9", "build_id": "b"}))
    assert other_device.request_id == "r-1"


@pytest.mark.parametrize(
    "request_id", [7, "", "has space", "x" * 129, ["r"], "caf\u00e9"]
)
def test_unreadable_request_id_is_left_out(request_id: object) -> None:
    reply = error_of(announce({"build_id": 5, "request_id": request_id}))
    assert reply.request_id is None


def test_invalid_request_id_in_a_good_announcement_is_an_error() -> None:
    reply = error_of(announce({"build_id": "build-100", "request_id": "has space"}))
    assert reply.error == "bad-request"
    assert "request_id" in reply.detail


def test_limit_is_the_configured_one() -> None:
    small = make_handler(max_bytes=300)
    payload = json.dumps({"build_id": "build-100", "pad": "x" * 300}).encode()
    result = small.handle(ANNOUNCE, payload, NOW)
    assert result.error == "payload-too-large"
    assert HANDLER.handle(ANNOUNCE, payload, NOW).outcome is Outcome.UPDATE_OFFERED


def test_a_failing_catalog_costs_one_error_reply_not_a_crash() -> None:
    def broken() -> Catalog:
        raise RuntimeError("boom")

    handler = BridgeHandler(TopicScheme(), OfferBuilder(), broken, MAX_BYTES)
    result = handler.handle(ANNOUNCE, b'{"build_id": "build-100", "request_id": "q"}', NOW)
    assert result.outcome is Outcome.ANNOUNCE_REJECTED
    assert result.error == "internal-error"
    assert result.detail is not None and "boom" in result.detail  # for the log
    assert result.reply is not None
    reply = parse_offer(result.reply.payload)
    assert isinstance(reply, ErrorReply) and reply.request_id == "q"
    assert "boom" not in reply.detail  # the device gets no internals


# -- topics that cannot be answered ------------------------------------------------------


@pytest.mark.parametrize(
    "topic",
    [
        "ota/v1/devices/bad id/announce",
        "ota/v1/devices/" + "d" * 65 + "/announce",
        "ota/v1/devices/dev+1/announce",
        "ota/v1/devices/dev#/announce",
        "ota/v1/devices//announce",
        "ota/v1/devices/a/b/announce",
        "ota/v1/devices/dev-1/reboot",
        "ota/v1/devices/dev-1",
        "other/v1/devices/dev-1/announce",
        "ota/v2/devices/dev-1/announce",
        "",
        "ota/v1/devices/dev-1/offer",  # devices do not publish offers
    ],
)
def test_unanswerable_topic_is_dropped_without_reply(topic: str) -> None:
    result = HANDLER.handle(topic, b'{"build_id": "build-100"}', NOW)
    assert result.outcome is Outcome.DROPPED
    assert result.reply is None and result.event is None
    assert result.error is not None and result.detail


# -- status reports ----------------------------------------------------------------------


def test_status_report_becomes_a_registry_event_without_reply() -> None:
    payload = json.dumps(
        {"state": "installed", "build_id": "build-1100", "detail": "ok", "request_id": "s1"}
    ).encode()
    result = HANDLER.handle(STATUS, payload, NOW)
    assert result.outcome is Outcome.STATUS_RECORDED
    assert result.reply is None
    assert isinstance(result.event, StatusSeen)
    assert result.event.device_id == "dev-1"
    assert result.event.report.state.value == "installed"
    assert result.event.report.build_id == "build-1100"
    assert result.event.at == NOW
    assert result.request_id == "s1"


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"\xff",
        b"[]",
        b'{"state": "exploded", "build_id": "b"}',
        b'{"state": "installed"}',
        b'{"state": 1, "build_id": "b"}',
        b'{"state": "installed", "build_id": "b", "detail": "' + b"x" * 600 + b'"}',
        b'{"state": "installed", "build_id": "b", "device_id": "dev-2"}',
        b"[" * 2000 + b"]" * 2000,
        b'{"state": "installed", "build_id": "' + b"b" * 5000 + b'"}',
    ],
)
def test_malformed_status_is_rejected_without_reply(payload: bytes) -> None:
    # Decision: the offer topic answers announcements only; a bad status is logged, dropped.
    result = HANDLER.handle(STATUS, payload, NOW)
    assert result.outcome is Outcome.STATUS_REJECTED
    assert result.reply is None and result.event is None
    assert result.device_id == "dev-1"
    assert result.error and result.detail


def test_rejected_status_keeps_a_readable_request_id_for_the_log() -> None:
    result = HANDLER.handle(STATUS, b'{"state": "nope", "build_id": "b", "request_id": "z9"}', NOW)
    assert result.request_id == "z9"


# -- never raises ------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=600))
def test_any_bytes_on_announce_get_exactly_one_valid_reply(payload: bytes) -> None:
    result = HANDLER.handle(ANNOUNCE, payload, NOW)
    assert result.reply is not None and result.reply.topic == OFFER
    reply = parse_offer(result.reply.payload)
    assert reply.device_id == "dev-1"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    fields=st.dictionaries(
        st.sampled_from(["build_id", "version", "hardware", "channel", "request_id", "device_id"]),
        json_values | st.sampled_from(["build-100", "1.2.3", "dev-1", "board-b", "r-1"]),
    )
)
def test_any_json_object_on_announce_gets_a_valid_reply(fields: dict[str, object]) -> None:
    result = HANDLER.handle(ANNOUNCE, json.dumps(fields).encode(), NOW)
    assert result.reply is not None
    reply = parse_offer(result.reply.payload)
    assert reply.device_id == "dev-1"
    # Recorded exactly when the announcement itself was valid.
    usable = not isinstance(reply, ErrorReply) or reply.error == "unknown-build"
    assert (result.event is not None) == usable


@settings(max_examples=300, deadline=None)
@given(topic=st.text(max_size=80), payload=st.binary(max_size=100))
def test_any_topic_and_payload_never_raise(topic: str, payload: bytes) -> None:
    result = HANDLER.handle(topic, payload, NOW)
    assert isinstance(result.outcome, Outcome)
    if result.reply is not None:
        assert result.reply.topic.startswith("ota/v1/devices/")
        parse_offer(result.reply.payload)


# -- sealed offers (an offer key exists) --------------------------------------------------

OFFER_KEY = OfferSigner.generate()
TRUSTED = TrustedOfferKeys.pinned([OFFER_KEY.public_hex])


def sealed_handler(signer: OfferSigner = OFFER_KEY) -> BridgeHandler:
    return BridgeHandler(
        TopicScheme(), OfferBuilder(offer_signer=signer), lambda: CATALOG, MAX_BYTES
    )


def check_sealed(result: HandlerResult, request_id: str | None) -> None:
    assert result.reply is not None
    offer = parse_offer(result.reply.payload)
    checker = OfferChecker(
        SIGNER.verifier, "dev-1", installed_version="1.0.0", offer_keys=TRUSTED
    )
    envelope = checker.check_envelope(offer, request_id)
    assert envelope is not None
    assert (envelope.device_id, envelope.nonce, envelope.status) == (
        "dev-1", request_id, offer.status
    )
    if isinstance(offer, UpdateOffer):
        checker.check(offer, request_id)


@pytest.mark.parametrize(
    "payload",
    [
        b'{"build_id": "build-100", "request_id": "n-1"}',  # update-available
        b'{"build_id": "build-1100", "request_id": "n-2"}',  # up-to-date
        b'{"build_id": "custom", "request_id": "n-3"}',  # unknown build
        b'{"build_id": 5, "request_id": "n-4"}',  # malformed
        b'{"build_id": "build-100"}',  # no nonce
    ],
)
def test_every_reply_is_sealed_for_the_device_and_its_nonce(payload: bytes) -> None:
    result = sealed_handler().handle(ANNOUNCE, payload, NOW)
    check_sealed(result, json.loads(payload).get("request_id"))


def test_a_rotated_offer_key_is_used_from_the_next_message() -> None:
    handler = sealed_handler()
    newer = OfferSigner.generate()
    handler.set_offers(handler.offers.with_signer(newer))
    result = handler.handle(ANNOUNCE, b'{"build_id": "build-100"}', NOW)
    assert result.reply is not None
    offer = parse_offer(result.reply.payload)
    assert offer.envelope is not None
    assert json.loads(offer.envelope)["key_id"] == newer.key_id
