"""HTTP for the reference device client: package downloads and ``GET /keys`` (stdlib only).

:class:`HttpPool` keeps a few keep-alive connections per host and caps how many
requests run against one host at once, so a fleet simulator with a thousand
devices shares a handful of connections instead of opening a thousand.

The package body is streamed in chunks through :class:`~ota_core.verify.PackageDigest`
(into a file, or nowhere when the caller only verifies), so a device never holds
a package in memory and never reads more than one byte past the signed size: a
server that sends more is cut off at the first extra byte (``size-exceeded``), and
a ``Content-Length`` above the signed size is refused before the body is read.

Only ``http`` and ``https`` URLs are fetched, in offers and in redirects alike.
Environment proxies (``http_proxy``) are not used.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO

from ota_core.errors import OtaError, VerificationFailed
from ota_core.verify import PackageDigest

CHUNK_SIZE = 64 * 1024
MAX_REDIRECTS = 5
USER_AGENT = "ota-device/1"
_REDIRECTS = (301, 302, 303, 307, 308)


class DownloadFailed(OtaError):
    """The package (or the key list) could not be fetched: network, HTTP status, bad URL."""

    code = "download-failed"
    http_status = 502


def package_url(base_url: str, offered_url: str) -> str:
    """Resolve an offer's ``url``: relative ones against ``base_url``, absolute ones as they are."""
    url = urllib.parse.urljoin(base_url.rstrip("/") + "/", offered_url)
    _split(url)  # refuses anything but http/https
    return url


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str
    port: int
    path: str  # path and query, as sent on the request line

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)


def _split(url: str) -> _Target:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise DownloadFailed(
            f"package url must be http or https, not {parts.scheme or 'relative'!r}"
        )
    if not parts.hostname:
        raise DownloadFailed(f"url {url!r} names no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as e:
        raise DownloadFailed(f"url {url!r} has a bad port") from e
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return _Target(parts.scheme, parts.hostname, port, path)


class _Host:
    """Idle keep-alive connections to one host, and the slots that cap concurrent requests."""

    def __init__(self, max_connections: int) -> None:
        self.slots = threading.BoundedSemaphore(max_connections)
        self.idle: list[http.client.HTTPConnection] = []
        self.lock = threading.Lock()


class HttpPool:
    """Keep-alive HTTP connections shared by any number of devices (thread-safe).

    At most ``max_per_host`` requests run against one host at once; the others wait
    for a slot (bounded by their timeout). Idle connections are reused, and a reused
    connection the server has meanwhile closed is retried once on a fresh one.
    """

    def __init__(self, max_per_host: int = 4, user_agent: str = USER_AGENT) -> None:
        if max_per_host < 1:
            raise ValueError("max_per_host must be at least 1")
        self.max_per_host = max_per_host
        self.user_agent = user_agent
        self._hosts: dict[tuple[str, str, int], _Host] = {}
        self._lock = threading.Lock()
        self._ssl: ssl.SSLContext | None = None
        self._closed = False
        #: Connections opened so far (reuse makes this far smaller than the request count).
        self.connections_opened = 0
        self.requests_sent = 0

    def _host(self, target: _Target) -> _Host:
        with self._lock:
            host = self._hosts.get(target.key)
            if host is None:
                host = self._hosts[target.key] = _Host(self.max_per_host)
            return host

    def _new_connection(self, target: _Target, timeout: float) -> http.client.HTTPConnection:
        with self._lock:
            self.connections_opened += 1
            if target.scheme == "https" and self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        if target.scheme == "https":
            return http.client.HTTPSConnection(
                target.host, target.port, timeout=timeout, context=context
            )
        return http.client.HTTPConnection(target.host, target.port, timeout=timeout)

    @contextmanager
    def _get(self, url: str, timeout: float) -> Iterator[tuple[str, http.client.HTTPResponse]]:
        """GET ``url`` following redirects; yields (final url, 200 response) with a slot held.

        The caller reads the body inside the ``with``; the connection goes back to
        the pool only when the body was read to its end and the server keeps it open.
        """
        for _ in range(MAX_REDIRECTS + 1):
            target = _split(url)
            host = self._host(target)
            if not host.slots.acquire(timeout=timeout):
                raise DownloadFailed(f"no free connection to {target.host} within {timeout:g}s")
            conn: http.client.HTTPConnection | None = None
            location: str | None = None
            try:
                try:
                    conn, response = self._request(host, target, timeout)
                    if response.status in _REDIRECTS:
                        location = response.getheader("Location")
                        response.read(64 * 1024)
                except (OSError, http.client.HTTPException) as e:
                    raise DownloadFailed(f"cannot fetch {url}: {e}") from e
                if response.status in _REDIRECTS:
                    self._release(host, conn, response)
                    conn = None
                    if not location:
                        raise DownloadFailed(f"HTTP {response.status} without a Location for {url}")
                    url = urllib.parse.urljoin(url, location)
                    continue
                if response.status != 200:
                    raise DownloadFailed(f"HTTP {response.status} {response.reason} for {url}")
                yield url, response
                self._release(host, conn, response)
                conn = None
                return
            finally:
                if conn is not None:
                    conn.close()
                host.slots.release()
        raise DownloadFailed(f"more than {MAX_REDIRECTS} redirects for {url}")

    @staticmethod
    def _read(response: http.client.HTTPResponse, size: int, url: str) -> bytes:
        try:
            return response.read(size)
        except (OSError, http.client.HTTPException) as e:  # timeouts, resets, short reads
            raise DownloadFailed(f"download of {url} broke off: {e}") from e

    def _request(
        self, host: _Host, target: _Target, timeout: float
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        headers = {"User-Agent": self.user_agent, "Accept-Encoding": "identity"}
        with host.lock:
            conn = host.idle.pop() if host.idle else None
        if conn is not None:
            try:
                conn.timeout = timeout
                if conn.sock is not None:
                    conn.sock.settimeout(timeout)
                conn.request("GET", target.path, headers=headers)
                self._count()
                return conn, conn.getresponse()
            except (OSError, http.client.HTTPException):
                # The server closed the idle connection meanwhile: once more, fresh.
                conn.close()
        conn = self._new_connection(target, timeout)
        try:
            conn.request("GET", target.path, headers=headers)
            self._count()
            return conn, conn.getresponse()
        except BaseException:
            conn.close()
            raise

    def _count(self) -> None:
        with self._lock:
            self.requests_sent += 1

    def _release(
        self, host: _Host, conn: http.client.HTTPConnection, response: http.client.HTTPResponse
    ) -> None:
        if response.isclosed() and not response.will_close and not self._closed:
            with host.lock:
                host.idle.append(conn)
        else:
            conn.close()

    def download_to(
        self, url: str, digest: PackageDigest, out: BinaryIO | None, timeout: float
    ) -> int:
        """Stream ``url`` through ``digest`` (and into ``out`` unless None); return bytes read.

        Raises :class:`DownloadFailed` for transport problems and
        :class:`~ota_core.errors.VerificationFailed` (``size-exceeded``) as soon as the
        server sends more than was signed. The caller still calls ``digest.finish()``.
        """
        written = 0
        with self._get(url, timeout) as (final_url, response):
            declared = response.getheader("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > digest.expected_size:
                raise VerificationFailed(
                    "size-exceeded",
                    f"server announces {declared} bytes, the signed size is {digest.expected_size}",
                )
            while True:
                # Ask for at most one byte past the signed size, so an endless body
                # is refused after one extra byte rather than read to the end.
                want = min(CHUNK_SIZE, digest.expected_size - digest.received + 1)
                chunk = self._read(response, want, final_url)
                if not chunk:
                    break
                digest.update(chunk)
                if out is not None:
                    out.write(chunk)  # a full disk stays an OSError: an install failure
                written += len(chunk)
        return written

    def get_json(self, url: str, timeout: float, max_bytes: int = 256 * 1024) -> dict[str, Any]:
        """GET a JSON object (``GET /keys``), refusing bodies over ``max_bytes``."""
        with self._get(url, timeout) as (final_url, response):
            body = self._read(response, max_bytes + 1, final_url)
            if len(body) > max_bytes:
                raise DownloadFailed(f"{url} sent more than {max_bytes} bytes")
        try:
            data = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise DownloadFailed(f"{url} did not answer with JSON: {e}") from e
        if not isinstance(data, dict):
            raise DownloadFailed(f"{url} did not answer with a JSON object")
        return data

    def close(self) -> None:
        with self._lock:
            self._closed = True
            hosts = list(self._hosts.values())
        for host in hosts:
            with host.lock:
                idle, host.idle = host.idle, []
            for conn in idle:
                conn.close()


def download_to(
    url: str, digest: PackageDigest, out: BinaryIO, timeout: float, user_agent: str = USER_AGENT
) -> int:
    """One download on a connection of its own (see :meth:`HttpPool.download_to`)."""
    pool = HttpPool(1, user_agent)
    try:
        return pool.download_to(url, digest, out, timeout)
    finally:
        pool.close()
