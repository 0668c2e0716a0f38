"""The seed's device-facing endpoints over a real socket, with the seed's field names."""

from __future__ import annotations

import hashlib

import pytest
import requests

from ota_core.signing import ReleaseVerifier
from tests.http_files.live_server import Running

V1 = b"firmware 1.1.0\n" * 100
V2 = b"firmware 1.2.0\n" * 300


@pytest.fixture
def two_releases(server: Running) -> Running:
    server.publish("build-1001", "1.1.0", V1)
    server.publish("build-1002", "1.2.0", V2)
    return server


def test_check_update_offers_the_newer_release_like_the_mqtt_offer(two_releases: Running) -> None:
    response = two_releases.post(
        "/check-update", json={"device_id": "device123", "build_id": "build-1001"}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "update-available"
    assert body["device_id"] == "device123"
    assert body["build_id"] == "build-1002"
    assert body["version"] == "1.2.0"
    assert body["url"] == "/packages/ota-1.2.0.zip"
    assert body["size"] == len(V2)
    assert body["checksum"] == hashlib.sha256(V2).hexdigest()
    assert body["key_id"] == two_releases.dirs.key_id
    assert "request_id" not in body  # none was sent
    verifier = ReleaseVerifier.from_pem(two_releases.dirs.public_key_path.read_bytes())
    verifier.verify(body["checksum"].encode(), body["signature"], "checksum")
    verifier.verify(body["manifest"].encode(), body["manifest_signature"], "manifest")


def test_check_update_echoes_request_id_and_uses_announced_version(two_releases: Running) -> None:
    response = two_releases.post(
        "/check-update",
        json={
            "device_id": "dev-7",
            "build_id": "build-0900",
            "version": "0.9.0",
            "request_id": "req-1",
        },
    )
    assert response.status_code == 200
    assert response.json()["request_id"] == "req-1"
    assert response.json()["version"] == "1.2.0"


def test_check_update_up_to_date(two_releases: Running) -> None:
    response = two_releases.post(
        "/check-update", json={"device_id": "device123", "build_id": "build-1002"}
    )
    assert response.status_code == 200
    assert response.json() == {
        "status": "up-to-date",
        "device_id": "device123",
        "build_id": "build-1002",
        "version": "1.2.0",
    }


def test_check_update_unknown_build_is_404_with_error_body(two_releases: Running) -> None:
    response = two_releases.post(
        "/check-update", json={"device_id": "device123", "build_id": "build-9999"}
    )
    assert response.status_code == 404
    body = response.json()
    assert body["status"] == "error"
    assert body["error"] == "unknown-build"
    assert "build-9999" in body["detail"]


def test_check_update_is_recorded_in_the_device_registry(two_releases: Running) -> None:
    two_releases.post(
        "/check-update",
        json={"device_id": "device123", "build_id": "build-1001", "hardware": "board-a"},
    )
    record = two_releases.services.registry.get("device123")
    assert record is not None
    assert record.build_id == "build-1001"
    assert record.hardware == "board-a"
    assert record.last_offered_build == "build-1002"


def test_a_release_added_later_is_offered_at_once(server: Running) -> None:
    server.publish("build-1001", "1.1.0", V1)
    ask = {"device_id": "d1", "build_id": "build-1001"}
    assert server.post("/check-update", json=ask).json()["status"] == "up-to-date"
    server.publish("build-1002", "1.2.0", V2)
    assert server.post("/check-update", json=ask).json()["build_id"] == "build-1002"


@pytest.mark.parametrize(
    ("payload", "content_type"),
    [
        (b"not json", "application/json"),
        (b"[1, 2]", "application/json"),
        (b'{"device_id": 5, "build_id": "build-1001"}', "application/json"),
        (b'{"device_id": "a/b", "build_id": "build-1001"}', "application/json"),
        (b'{"device_id": "d", "build_id": "build 1001"}', "application/json"),
        (
            b'{"device_id": "d", "build_id": "build-1001", "version": "not-a-version"}',
            "application/json",
        ),
        (b'{"build_id": "build-1001"}', "application/json"),
        (b"{}", "application/json"),
        (b'{"device_id": "' + b"x" * 65 + b'", "build_id": "b"}', "application/json"),
    ],
)
def test_bad_check_update_bodies_are_400_with_error_body(
    server: Running, payload: bytes, content_type: str
) -> None:
    response = server.post("/check-update", data=payload, headers={"Content-Type": content_type})
    assert response.status_code == 400, response.text
    assert response.json()["status"] == "error"
    assert response.json()["error"] == "bad-request"


def test_huge_check_update_body_is_413(server: Running) -> None:
    payload = b'{"device_id": "d", "build_id": "b", "pad": "' + b"x" * 200_000 + b'"}'
    response = server.post(
        "/check-update", data=payload, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413


def test_checksum_fields(two_releases: Running) -> None:
    response = two_releases.get("/checksum/ota-1.1.0.zip")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"filename", "checksum", "signature"}
    assert body["filename"] == "ota-1.1.0.zip"
    assert body["checksum"] == hashlib.sha256(V1).hexdigest()
    verifier = ReleaseVerifier.from_pem(two_releases.dirs.public_key_path.read_bytes())
    verifier.verify(body["checksum"].encode(), body["signature"], "checksum")


def test_checksum_of_unpublished_or_missing_file_is_404(server: Running) -> None:
    server.put_file("loose.bin", b"not published")
    for name in ("loose.bin", "missing.zip"):
        response = server.get(f"/checksum/{name}")
        assert response.status_code == 404
        assert response.json()["error"] == "package-not-found"


def test_metadata_has_the_seed_shape(two_releases: Running) -> None:
    response = two_releases.get("/metadata")
    assert response.status_code == 200
    assert response.json() == {
        "build-1002": {"version": "1.2.0", "filename": "ota-1.2.0.zip"},
        "build-1001": {"version": "1.1.0", "filename": "ota-1.1.0.zip"},
    }


def test_metadata_when_empty(server: Running) -> None:
    assert server.get("/metadata").json() == {}


def test_update_describes_a_builds_release(two_releases: Running) -> None:
    response = two_releases.get("/update", params={"build_id": "build-1001"})
    assert response.status_code == 200
    body = response.json()
    assert body["build_id"] == "build-1001"
    assert body["version"] == "1.1.0"
    assert body["filename"] == "ota-1.1.0.zip"
    assert body["url"] == "/packages/ota-1.1.0.zip"
    assert body["size"] == len(V1)
    assert body["checksum"] == hashlib.sha256(V1).hexdigest()
    for name in ("signature", "manifest", "manifest_signature", "key_id"):
        assert body[name]


@pytest.mark.parametrize(
    ("params", "status"),
    [({"build_id": "build-4040"}, 404), ({"build_id": "../etc"}, 400), ({}, 400)],
)
def test_update_errors(server: Running, params: dict[str, str], status: int) -> None:
    response = server.get("/update", params=params)
    assert response.status_code == status
    assert response.json()["status"] == "error"


def test_unknown_route_and_wrong_method_use_the_error_body(server: Running) -> None:
    missing = server.get("/nothing-here")
    assert missing.status_code == 404
    assert missing.json()["error"] == "not-found"
    wrong = requests.put(server.url + "/metadata", timeout=30)
    assert wrong.status_code == 405
    assert wrong.json()["status"] == "error"
