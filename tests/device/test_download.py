"""HttpPool against a real (keep-alive) HTTP server: reuse, the per-host cap, redirects,
size limits."""

from __future__ import annotations

import hashlib
import io
import threading
import uuid

import pytest

from ota_core.device import DownloadFailed, HttpPool
from ota_core.errors import VerificationFailed
from ota_core.verify import PackageDigest
from tests.device.harness import PackageServer


def _serve(http_server: PackageServer, body: bytes) -> tuple[str, PackageDigest]:
    path = f"/pool/{uuid.uuid4().hex}.bin"
    url = http_server.add(path, body)
    return url, PackageDigest(len(body), hashlib.sha256(body).hexdigest())


def test_keep_alive_connections_are_reused(http_server: PackageServer) -> None:
    body = b"x" * 100_000
    pool = HttpPool(max_per_host=4)
    try:
        for _ in range(5):
            url, digest = _serve(http_server, body)
            out = io.BytesIO()
            assert pool.download_to(url, digest, out, timeout=10) == len(body)
            digest.finish()
            assert out.getvalue() == body
        assert pool.requests_sent == 5
        assert pool.connections_opened == 1
    finally:
        pool.close()


def test_concurrent_downloads_never_open_more_than_the_cap(http_server: PackageServer) -> None:
    body = b"y" * 50_000
    pool = HttpPool(max_per_host=2)
    errors: list[BaseException] = []

    def fetch() -> None:
        try:
            url, digest = _serve(http_server, body)
            pool.download_to(url, digest, None, timeout=10)  # verify only, store nothing
            digest.finish()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=fetch) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    pool.close()
    assert errors == []
    assert pool.requests_sent == 12
    assert pool.connections_opened <= 2


def test_redirects_are_followed_but_only_to_http(http_server: PackageServer) -> None:
    body = b"z" * 1000
    url, digest = _serve(http_server, body)
    hop = http_server.redirect(f"/hop/{uuid.uuid4().hex}", url.removeprefix(http_server.url))
    pool = HttpPool()
    try:
        assert pool.download_to(hop, digest, None, timeout=10) == len(body)
        evil = http_server.redirect(f"/hop/{uuid.uuid4().hex}", "file:///etc/passwd")
        with pytest.raises(DownloadFailed, match="http or https"):
            pool.download_to(evil, PackageDigest(10, "0" * 64), None, timeout=10)
        loop = f"/loop/{uuid.uuid4().hex}"
        http_server.redirect(loop, loop)
        with pytest.raises(DownloadFailed, match="redirects"):
            pool.download_to(http_server.url + loop, PackageDigest(10, "0" * 64), None, 10)
    finally:
        pool.close()


def test_more_than_signed_is_refused_before_reading_and_the_pool_recovers(
    http_server: PackageServer,
) -> None:
    body = b"w" * 10_000
    url, _ = _serve(http_server, body)
    pool = HttpPool(max_per_host=1)
    try:
        with pytest.raises(VerificationFailed, match="size-exceeded"):
            pool.download_to(url, PackageDigest(100, "0" * 64), None, timeout=10)
        # The slot was given back: the next download is not stuck behind it.
        good_url, digest = _serve(http_server, body)
        assert pool.download_to(good_url, digest, None, timeout=10) == len(body)
    finally:
        pool.close()


def test_get_json_refuses_oversized_and_non_json(http_server: PackageServer) -> None:
    pool = HttpPool()
    try:
        big = http_server.add(f"/json/{uuid.uuid4().hex}", b"{" + b" " * 5000 + b"}")
        with pytest.raises(DownloadFailed, match="more than 1000 bytes"):
            pool.get_json(big, timeout=10, max_bytes=1000)
        text = http_server.add(f"/json/{uuid.uuid4().hex}", b"hello")
        with pytest.raises(DownloadFailed, match="JSON"):
            pool.get_json(text, timeout=10)
        missing = http_server.url + "/json/none"
        with pytest.raises(DownloadFailed, match="HTTP 404"):
            pool.get_json(missing, timeout=10)
    finally:
        pool.close()
