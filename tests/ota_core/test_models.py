import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ota_core.errors import InvalidInput, OtaError, PayloadTooLarge
from ota_core.models import (
    MAX_MESSAGE_BYTES,
    Announcement,
    DeviceState,
    ErrorReply,
    ReleaseManifest,
    StatusReport,
    UpToDate,
    parse_offer,
)


def test_announcement_roundtrip() -> None:
    raw = (
        b'{"build_id":"build-1001","version":"1.1.0","hardware":"board-a",'
        b'"channel":"stable","request_id":"r-1"}'
    )
    ann = Announcement.from_bytes(raw)
    assert (ann.build_id, ann.version, ann.hardware, ann.channel, ann.request_id) == (
        "build-1001",
        "1.1.0",
        "board-a",
        "stable",
        "r-1",
    )
    assert Announcement.from_bytes(ann.to_bytes()) == ann


def test_announcement_ignores_unknown_fields_for_forward_compatibility() -> None:
    assert Announcement.from_bytes(b'{"build_id":"b1","uptime":5}').build_id == "b1"


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"\xff\xfe", "UTF-8"),
        (b"not json", "not valid JSON"),
        (b"[1,2]", "JSON object"),
        (b'{"build_id": 1001}', "build_id"),
        (b'{"version": "1.0"}', "build_id"),
        (b'{"build_id": "a/b"}', "build_id"),
        (b'{"build_id": "ota/v1/#"}', "build_id"),
        (b'{"build_id": "b", "version": true}', "version"),
        (b'{"build_id": "b", "version": NaN}', "not valid JSON"),
        (b'{"build_id": ' + b"9" * 4000 + b"}", "build_id"),
        (b'{"build_id": "b", "n": ' + b"9" * 5000 + b"}", "limit is 4096"),
        (b"[" * 2000 + b"]" * 2000, "nested too deeply"),
    ],
)
def test_bad_announcements_give_clear_errors(payload: bytes, fragment: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        Announcement.from_bytes(payload)
    assert fragment in caught.value.detail


def test_deeply_nested_object_is_refused_not_crashing() -> None:
    depth = 100_000
    payload = b'{"a":' * depth + b"1" + b"}" * depth
    with pytest.raises(InvalidInput):
        Announcement.from_bytes(payload[:MAX_MESSAGE_BYTES])  # within the size limit
    with pytest.raises(PayloadTooLarge):
        Announcement.from_bytes(payload)


@given(st.binary(max_size=600))
def test_announcement_parsing_never_raises_anything_but_ota_errors(payload: bytes) -> None:
    with contextlib.suppress(OtaError):
        Announcement.from_bytes(payload)


@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False)
        | st.text(max_size=20),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=8), children, max_size=4)
        ),
        max_leaves=30,
    )
)
def test_any_json_value_parses_or_fails_cleanly(value: object) -> None:
    payload = json.dumps({"build_id": value}).encode()
    try:
        ann = Announcement.from_bytes(payload)
    except OtaError:
        return
    assert isinstance(ann.build_id, str)


def test_status_report_states() -> None:
    report = StatusReport.from_bytes(b'{"state":"installing","build_id":"b2","detail":"50%"}')
    assert report.state is DeviceState.INSTALLING
    with pytest.raises(InvalidInput, match="state must be one of"):
        StatusReport.from_bytes(b'{"state":"exploded","build_id":"b2"}')
    with pytest.raises(InvalidInput):
        StatusReport.from_bytes(b'{"state":3,"build_id":"b2"}')


def test_offer_kinds_parse_back() -> None:
    up = UpToDate(device_id="d1", build_id="b1", version="1.0.0")
    err = ErrorReply(device_id="d1", request_id="r", error="unknown-build", detail="no such build")
    assert parse_offer(up.to_bytes()) == up
    assert parse_offer(err.to_bytes()) == err
    assert "request_id" not in json.loads(up.to_bytes())  # optional fields are left out, not null
    with pytest.raises(InvalidInput):
        parse_offer(b'{"status":"maybe"}')


def test_manifest_bytes_are_canonical() -> None:
    manifest = ReleaseManifest(
        build_id="b",
        version="1.0.0",
        filename="f.bin",
        size=3,
        sha256="0" * 64,
        release_counter=1,
        key_id="0123456789abcdef",
        issued_at="2026-01-01T00:00:00+00:00",
    )
    raw = manifest.to_bytes()
    assert raw == json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":")).encode()
    assert ReleaseManifest.from_bytes(raw) == manifest
