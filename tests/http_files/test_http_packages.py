"""GET /packages/{filename}: streaming, Range, ETag, and refusing every odd name."""

from __future__ import annotations

import hashlib
import http.client
import os

import pytest

from ota_core.releases import ReleaseRequest
from ota_core.services import Services
from tests.http_files.live_server import Running

CONTENT = bytes(range(256)) * 40  # 10240 bytes, every offset distinguishable
SHA = hashlib.sha256(CONTENT).hexdigest()
SIZE = len(CONTENT)


@pytest.fixture
def published(server: Running) -> Running:
    server.publish("build-2001", "2.0.1", CONTENT, filename="fw.bin")
    return server


def raw_get(server: Running, raw_path: str) -> tuple[int, bytes]:
    """GET exactly ``raw_path`` (no client-side normalising of ``..`` or escapes)."""
    conn = http.client.HTTPConnection(server.server.host, server.server.port, timeout=30)
    try:
        conn.putrequest("GET", raw_path, skip_accept_encoding=True)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_full_download_has_length_etag_and_accept_ranges(published: Running) -> None:
    response = published.get("/packages/fw.bin")
    assert response.status_code == 200
    assert response.content == CONTENT
    assert response.headers["Content-Length"] == str(SIZE)
    assert response.headers["ETag"] == f'"{SHA}"'
    assert response.headers["Accept-Ranges"] == "bytes"


def test_head_gives_headers_only(published: Running) -> None:
    conn = http.client.HTTPConnection(published.server.host, published.server.port, timeout=30)
    conn.request("HEAD", "/packages/fw.bin")
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Length") == str(SIZE)
    assert response.getheader("ETag") == f'"{SHA}"'
    assert response.read() == b""
    conn.close()


@pytest.mark.parametrize(
    ("range_header", "start", "end"),
    [
        ("bytes=0-99", 0, 99),
        ("bytes=-100", SIZE - 100, SIZE - 1),  # suffix: the last 100 bytes
        ("bytes=10000-", 10000, SIZE - 1),  # open-ended
        ("bytes=5000-999999", 5000, SIZE - 1),  # end past the file is clamped
    ],
)
def test_range_requests(published: Running, range_header: str, start: int, end: int) -> None:
    response = published.get("/packages/fw.bin", headers={"Range": range_header})
    assert response.status_code == 206
    assert response.content == CONTENT[start : end + 1]
    assert response.headers["Content-Range"] == f"bytes {start}-{end}/{SIZE}"
    assert response.headers["Content-Length"] == str(end - start + 1)
    assert response.headers["ETag"] == f'"{SHA}"'


def test_resuming_a_download_with_ranges_reassembles_the_file(published: Running) -> None:
    first = published.get("/packages/fw.bin", headers={"Range": "bytes=0-4095"}).content
    rest = published.get(
        "/packages/fw.bin", headers={"Range": "bytes=4096-", "If-Range": f'"{SHA}"'}
    )
    assert rest.status_code == 206
    assert hashlib.sha256(first + rest.content).hexdigest() == SHA


def test_if_range_with_a_stale_etag_sends_the_whole_file(published: Running) -> None:
    response = published.get(
        "/packages/fw.bin", headers={"Range": "bytes=4096-", "If-Range": '"stale"'}
    )
    assert response.status_code == 200
    assert response.content == CONTENT


@pytest.mark.parametrize("range_header", [f"bytes={SIZE}-", f"bytes={SIZE + 10}-{SIZE + 20}"])
def test_unsatisfiable_range_is_416(published: Running, range_header: str) -> None:
    response = published.get("/packages/fw.bin", headers={"Range": range_header})
    assert response.status_code == 416
    assert response.headers["Content-Range"] == f"bytes */{SIZE}"


def test_if_none_match_gives_304(published: Running) -> None:
    response = published.get("/packages/fw.bin", headers={"If-None-Match": f'"{SHA}"'})
    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["ETag"] == f'"{SHA}"'
    changed = published.get("/packages/fw.bin", headers={"If-None-Match": '"other"'})
    assert changed.status_code == 200


def test_unpublished_file_in_packages_is_served_like_the_seed(server: Running) -> None:
    server.put_file("staged-1.3.0.zip", b"staged package")
    response = server.get("/packages/staged-1.3.0.zip")
    assert response.status_code == 200
    assert response.content == b"staged package"
    # Not a release: the ETag is derived from the file, not a (nonexistent) release hash.
    assert response.headers["ETag"].startswith('"')
    assert response.headers["ETag"] != f'"{hashlib.sha256(b"staged package").hexdigest()}"'


def test_directory_is_not_served(server: Running) -> None:
    (server.dirs.packages_dir / "subdir").mkdir()
    assert server.get("/packages/subdir").status_code == 404


def test_symlink_to_a_file_outside_packages_is_404(server: Running) -> None:
    secret = server.dirs.root / "secret.txt"
    secret.write_bytes(b"TOP-SECRET")
    os.symlink(secret, server.dirs.packages_dir / "leak.zip")
    response = server.get("/packages/leak.zip")
    assert response.status_code == 404
    assert b"TOP-SECRET" not in response.content


def test_symlink_to_a_folder_outside_packages_is_404(server: Running) -> None:
    os.symlink(server.dirs.keys_dir, server.dirs.packages_dir / "keys")
    status, body = raw_get(server, "/packages/keys")
    assert status == 404
    status, body = raw_get(server, "/packages/keys%2Fprivate.pem")
    assert status in (400, 404)
    assert b"PRIVATE KEY" not in body


def test_missing_file_is_404(server: Running) -> None:
    response = server.get("/packages/nope.zip")
    assert response.status_code == 404
    assert response.json()["error"] == "package-not-found"


ODD_PATHS = [
    "/packages/../keys/private.pem",
    "/packages/..%2fkeys%2fprivate.pem",
    "/packages/%2e%2e%2fkeys%2fprivate.pem",
    "/packages/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/packages/%2e%2e",
    "/packages/..",
    "/packages/%2fetc%2fpasswd",
    "/packages//etc/passwd",
    "/packages/%00",
    "/packages/fw.bin%00.zip",
    "/packages/.hidden",
    "/packages/%5c..%5ckeys%5cprivate.pem",
    "/packages/" + "a" * 5000,
    "/packages/%ff%fe.zip",
    "/packages/fw.bin%20",
]


@pytest.mark.parametrize("raw_path", ODD_PATHS)
def test_odd_package_names_are_400_or_404_never_500(published: Running, raw_path: str) -> None:
    (published.dirs.packages_dir / ".hidden").write_bytes(b"hidden")
    status, body = raw_get(published, raw_path)
    assert status in (400, 404), (raw_path, status, body[:200])
    assert b"PRIVATE KEY" not in body
    assert b"root:" not in body
    assert body != b"hidden"


@pytest.mark.parametrize("raw_path", [p.replace("/packages/", "/checksum/") for p in ODD_PATHS])
def test_odd_checksum_names_are_400_or_404_never_500(published: Running, raw_path: str) -> None:
    status, _ = raw_get(published, raw_path)
    assert status in (400, 404), (raw_path, status)


def test_bad_name_error_body(server: Running) -> None:
    status, body = raw_get(server, "/packages/.hidden")
    assert status == 400
    assert b'"error":"bad-filename"' in body


def test_upload_temp_files_are_never_served(server: Running) -> None:
    # ReleaseService writes uploads to ".upload-*" first; such names are refused outright.
    (server.dirs.packages_dir / ".upload-abc123").write_bytes(b"partial")
    status, _ = raw_get(server, "/packages/.upload-abc123")
    assert status == 400


def _other_process(server: Running) -> Services:
    """A second Services on the same database and folders, as ``ota release add`` is."""
    return Services.from_settings(server.services.settings)


def test_release_published_elsewhere_gets_its_sha256_etag_at_once(server: Running) -> None:
    path = server.put_file("fw-cli.bin", CONTENT)
    os.utime(path, (path.stat().st_atime, path.stat().st_mtime - 60))  # an old file
    assert server.get("/packages/fw-cli.bin").headers["ETag"] != f'"{SHA}"'  # unpublished
    other = _other_process(server)
    try:
        other.releases.add_existing(ReleaseRequest("build-2101", "2.1.1", "fw-cli.bin"))
    finally:
        other.close()
    # The HTTP side checked its catalog a moment ago, but that snapshot lacks the file.
    assert server.get("/packages/fw-cli.bin").headers["ETag"] == f'"{SHA}"'


def test_a_replaced_file_never_keeps_the_old_etag(server: Running) -> None:
    first = server.publish("build-2201", "2.2.1", CONTENT, filename="fw-re.bin")
    assert server.get("/packages/fw-re.bin").headers["ETag"] == f'"{first["sha256"]}"'
    # Another process deletes the release and publishes new content, same name and size:
    # the snapshot (checked under a second ago) has the name at that size, but the file
    # is newer than the check, so the route asks the database again.
    replacement = bytes(reversed(CONTENT))
    other = _other_process(server)
    try:
        other.releases.delete("build-2201", delete_file=True)
        server.put_file("fw-re.bin", replacement)
        other.releases.add_existing(ReleaseRequest("build-2202", "2.2.2", "fw-re.bin"))
    finally:
        other.close()
    response = server.get("/packages/fw-re.bin")
    assert response.content == replacement
    assert response.headers["ETag"] == f'"{hashlib.sha256(replacement).hexdigest()}"'
