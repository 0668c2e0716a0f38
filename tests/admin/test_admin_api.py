"""The JSON admin API: releases, uploads and their limits, devices, metadata import/export."""

from __future__ import annotations

import base64
import hashlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.http_files.live_server import Running, StartServer


def package_files(server: Running) -> list[str]:
    """Everything in packages/, hidden temp files included."""
    return sorted(p.name for p in server.dirs.packages_dir.iterdir())


def test_upload_returns_the_signed_release(server: Running) -> None:
    content = b"api upload" * 1000
    response = server.upload(
        "build-1",
        "1.0.0",
        content,
        "fw-1.0.0.bin",
        hardware="board-a",
        channel="stable",
        notes="hello",
        sha256=hashlib.sha256(content).hexdigest().upper(),
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["build_id"] == "build-1"
    assert body["url"] == "/packages/fw-1.0.0.bin"
    assert body["size"] == len(content)
    assert body["sha256"] == hashlib.sha256(content).hexdigest()
    assert (body["hardware"], body["channel"], body["notes"]) == ("board-a", "stable", "hello")
    assert body["key_id"] == server.dirs.key_id
    assert server.admin_call("GET", "/admin/api/releases").json() == [body]
    assert package_files(server) == ["fw-1.0.0.bin"]


def test_upload_with_an_explicit_filename(server: Running) -> None:
    response = server.admin_call(
        "POST",
        "/admin/api/releases",
        files={"file": ("C:\\tmp\\whatever.zip", b"x")},
        data={"build_id": "build-1", "version": "1.0.0", "filename": "named.zip"},
    )
    assert response.status_code == 201
    assert response.json()["filename"] == "named.zip"
    # Without the field, the client's file name is used, minus any path a browser sent.
    response = server.admin_call(
        "POST",
        "/admin/api/releases",
        files={"file": ("../../etc/other.zip", b"y")},
        data={"build_id": "build-2", "version": "2.0.0"},
    )
    assert response.json()["filename"] == "other.zip"
    assert package_files(server) == ["named.zip", "other.zip"]


def test_declared_checksum_mismatch_is_400_and_nothing_is_published(server: Running) -> None:
    response = server.upload("build-1", "1.0.0", b"content", "a.zip", sha256="ab" * 32)
    assert response.status_code == 400
    assert response.json()["error"] == "checksum-mismatch"
    assert server.get("/metadata").json() == {}
    assert package_files(server) == []


@pytest.mark.parametrize(
    ("fields", "filename"),
    [
        ({"build_id": "bad id", "version": "1.0.0"}, "a.zip"),
        ({"build_id": "b1", "version": "latest"}, "a.zip"),
        ({"build_id": "b1", "version": "1.0.0", "filename": "../a.zip"}, "a.zip"),
        ({"build_id": "b1", "version": "1.0.0", "filename": "/etc/a.zip"}, "a.zip"),
        ({"build_id": "b1", "version": "1.0.0"}, ".hidden"),
        ({"build_id": "b1", "version": "1.0.0", "sha256": "xyz"}, "a.zip"),
        ({"build_id": "b1", "version": "1.0.0", "hardware": "a/b"}, "a.zip"),
        ({"version": "1.0.0"}, "a.zip"),
    ],
)
def test_bad_upload_fields_are_400_and_leave_no_file(
    server: Running, fields: dict[str, str], filename: str
) -> None:
    response = server.admin_call(
        "POST", "/admin/api/releases", files={"file": (filename, b"data")}, data=fields
    )
    assert response.status_code == 400, response.text
    assert response.json()["status"] == "error"
    assert package_files(server) == []


def test_upload_without_a_file_is_400(server: Running) -> None:
    response = server.admin_call(
        "POST", "/admin/api/releases", data={"build_id": "b1", "version": "1.0.0"}
    )
    assert response.status_code == 400


def test_upload_over_the_limit_is_413_and_leaves_no_file(start_server: StartServer) -> None:
    server = start_server(max_upload_bytes=4096)
    response = server.upload("build-1", "1.0.0", b"x" * 4097, "big.zip")
    assert response.status_code == 413
    assert response.json()["error"] == "payload-too-large"
    assert package_files(server) == []
    assert server.get("/metadata").json() == {}
    # Exactly at the limit is fine.
    assert server.upload("build-1", "1.0.0", b"x" * 4096, "big.zip").status_code == 201


def test_body_far_over_the_limit_is_refused_before_it_is_read(
    start_server: StartServer,
) -> None:
    server = start_server(max_upload_bytes=4096)
    response = server.upload("build-1", "1.0.0", b"x" * (3 * 1024 * 1024), "huge.zip")
    assert response.status_code == 413
    assert package_files(server) == []


def test_chunked_upload_over_the_limit_is_cut_off(start_server: StartServer) -> None:
    """No Content-Length: the body limit still stops the stream (413), nothing is stored."""
    server = start_server(max_upload_bytes=4096)
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="build_id"\r\n\r\nb1\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="version"\r\n\r\n1.0.0\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="c.zip"\r\nContent-Type: application/octet-stream\r\n\r\n'
    ).encode()

    def chunks() -> Iterator[bytes]:
        yield head
        for _ in range(40):  # 2.5 MiB > limit + form overhead
            yield b"y" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    try:
        response = server.admin.post(
            server.url + "/admin/api/releases",
            data=chunks(),
            timeout=60,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
    except requests.ConnectionError:
        pass  # the server may close the connection while the client is still sending
    else:
        assert response.status_code == 413
    assert package_files(server) == []


def test_from_file_publishes_a_file_already_in_packages(server: Running) -> None:
    server.put_file("ota-1.1.0.zip", b"one-one")
    response = server.admin_call(
        "POST",
        "/admin/api/releases/from-file",
        json={"build_id": "build-1001", "version": "1.1.0", "filename": "ota-1.1.0.zip"},
    )
    assert response.status_code == 201
    assert response.json()["sha256"] == hashlib.sha256(b"one-one").hexdigest()


def test_from_file_errors(server: Running) -> None:
    missing = server.admin_call(
        "POST",
        "/admin/api/releases/from-file",
        json={"build_id": "b", "version": "1.0.0", "filename": "nope.zip"},
    )
    assert missing.status_code == 404
    typo = server.admin_call(
        "POST",
        "/admin/api/releases/from-file",
        json={"build_id": "b", "version": "1.0.0", "filename": "x.zip", "hardwar": "a"},
    )
    assert typo.status_code == 400


def test_duplicate_build_id_or_filename_is_409(server: Running) -> None:
    server.publish("build-1", "1.0.0", b"one", filename="one.zip")
    same_build = server.upload("build-1", "1.0.1", b"two", "two.zip")
    assert same_build.status_code == 409
    assert same_build.json()["error"] == "conflict"
    same_file = server.upload("build-2", "1.0.1", b"two", "one.zip")
    assert same_file.status_code == 409
    server.put_file("three.zip", b"3")
    via_name = server.admin_call(
        "POST",
        "/admin/api/releases/from-file",
        json={"build_id": "build-1", "version": "1.0.2", "filename": "three.zip"},
    )
    assert via_name.status_code == 409
    assert package_files(server) == ["one.zip", "three.zip"]
    assert (server.dirs.packages_dir / "one.zip").read_bytes() == b"one"


def test_delete_release_and_optionally_its_file(server: Running) -> None:
    server.publish("build-1", "1.0.0", b"one", filename="one.zip")
    server.publish("build-2", "2.0.0", b"two", filename="two.zip")
    kept = server.admin_call("DELETE", "/admin/api/releases/build-1")
    assert kept.status_code == 200
    assert kept.json()["build_id"] == "build-1"
    removed = server.admin_call(
        "DELETE", "/admin/api/releases/build-2", params={"delete_file": "true"}
    )
    assert removed.status_code == 200
    assert package_files(server) == ["one.zip"]
    assert server.get("/metadata").json() == {}
    again = server.admin_call("DELETE", "/admin/api/releases/build-2")
    assert again.status_code == 404


def test_devices_come_from_the_registry(server: Running) -> None:
    server.publish("build-1", "1.0.0", b"one")
    server.post(
        "/check-update", json={"device_id": "dev-a", "build_id": "build-1", "channel": "stable"}
    )
    devices = server.admin_call("GET", "/admin/api/devices").json()
    assert [d["device_id"] for d in devices] == ["dev-a"]
    one = server.admin_call("GET", "/admin/api/devices/dev-a").json()
    assert one["build_id"] == "build-1"
    assert one["channel"] == "stable"
    assert one["last_seen"]
    assert server.admin_call("GET", "/admin/api/devices/dev-zzz").status_code == 404
    assert server.admin_call("GET", "/admin/api/devices/bad%20id").status_code == 400


def test_metadata_export_import_roundtrip(start_server: StartServer, tmp_path: Path) -> None:
    first = start_server()
    first.publish("build-1001", "1.1.0", b"eleven")
    first.publish("build-1002", "1.2.0", b"twelve")
    exported = first.admin_call("GET", "/admin/api/metadata/export").json()
    assert exported == {
        "build-1002": {"version": "1.2.0", "filename": "ota-1.2.0.zip"},
        "build-1001": {"version": "1.1.0", "filename": "ota-1.1.0.zip"},
    }
    # A second server on the same packages folder but an empty database.
    second = start_server(data_dir=tmp_path / "other-data")
    assert second.get("/metadata").json() == {}
    result = second.admin_call("POST", "/admin/api/metadata/import", json=exported)
    assert result.status_code == 200
    assert sorted(result.json()["added"]) == ["build-1001", "build-1002"]
    assert result.json()["problems"] == []
    assert second.admin_call("GET", "/admin/api/metadata/export").json() == exported
    checksum = second.get("/checksum/ota-1.2.0.zip").json()["checksum"]
    assert checksum == hashlib.sha256(b"twelve").hexdigest()


def test_import_reports_problems_and_keeps_the_good_entries(server: Running) -> None:
    server.put_file("good.zip", b"good")
    result = server.admin_call(
        "POST",
        "/admin/api/metadata/import",
        json={
            "build-1": {"version": "1.0.0", "filename": "good.zip"},
            "build-2": {"version": "2.0.0", "filename": "missing.zip"},
            "build-3": {"version": 3},
        },
    )
    assert result.status_code == 200
    assert result.json()["added"] == ["build-1"]
    assert len(result.json()["problems"]) == 2


def test_import_of_a_non_object_is_400(server: Running) -> None:
    response = server.admin_call("POST", "/admin/api/metadata/import", json=["x"])
    assert response.status_code == 400


def test_server_stays_healthy_after_a_dropped_upload(start_server: StartServer) -> None:
    server = start_server(max_upload_bytes=1024 * 1024)
    credentials = base64.b64encode(f"admin:{server.password}".encode()).decode()
    body_head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="d.zip"\r\n\r\n'
    with socket.create_connection((server.server.host, server.server.port), timeout=30) as sock:
        request = (
            "POST /admin/api/releases HTTP/1.1\r\n"
            f"Host: {server.server.host}:{server.server.port}\r\n"
            f"Authorization: Basic {credentials}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\n"
            "Content-Length: 500000\r\n\r\n"
        ).encode()
        sock.sendall(request + body_head + b"z" * 1000)
    assert server.get("/healthz").status_code == 200
    assert server.upload("build-1", "1.0.0", b"fine", "ok.zip").status_code == 201
    assert [n for n in package_files(server) if n != "ok.zip"] == []
