"""Package download over HTTP for the reference device client (stdlib only).

The body is streamed in chunks through :class:`~ota_core.verify.PackageDigest`
into a file, so a device never holds a package in memory and never reads more
than one byte past the signed size: a server that sends more is cut off at the
first extra byte (``size-exceeded``), and a ``Content-Length`` above the signed
size is refused before the body is read at all.
"""

from __future__ import annotations

import http.client
import urllib.error
import urllib.parse
import urllib.request
from typing import BinaryIO

from ota_core.errors import OtaError, VerificationFailed
from ota_core.verify import PackageDigest

CHUNK_SIZE = 64 * 1024

# Only HTTP(S): no file://, ftp:// or data: URLs, whether in an offer or in a redirect
# (HTTPRedirectHandler refuses other schemes, and with no handler for them any
# other scheme fails as "unknown url type").
_OPENER = urllib.request.OpenerDirector()
for _handler in (
    urllib.request.ProxyHandler(),
    urllib.request.UnknownHandler(),
    urllib.request.HTTPHandler(),
    urllib.request.HTTPSHandler(),
    urllib.request.HTTPDefaultErrorHandler(),
    urllib.request.HTTPRedirectHandler(),
    urllib.request.HTTPErrorProcessor(),
):
    _OPENER.add_handler(_handler)


class DownloadFailed(OtaError):
    """The package could not be fetched (network, HTTP status, bad URL)."""

    code = "download-failed"
    http_status = 502


def package_url(base_url: str, offered_url: str) -> str:
    """Resolve an offer's ``url``: relative ones against ``base_url``, absolute ones as they are."""
    url = urllib.parse.urljoin(base_url.rstrip("/") + "/", offered_url)
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise DownloadFailed(f"package url must be http or https, not {scheme or 'relative'!r}")
    return url


def download_to(
    url: str, digest: PackageDigest, out: BinaryIO, timeout: float, user_agent: str
) -> int:
    """Stream ``url`` into ``out`` through ``digest``; return the number of bytes written.

    Raises :class:`DownloadFailed` for transport problems and
    :class:`~ota_core.errors.VerificationFailed` (``size-exceeded``) as soon as the
    server sends more than was signed. The caller still has to call ``digest.finish()``.
    """
    # S310: _OPENER has handlers for http and https only (see above).
    request = urllib.request.Request(  # noqa: S310
        url, headers={"User-Agent": user_agent, "Accept-Encoding": "identity"}
    )
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > digest.expected_size:
                raise VerificationFailed(
                    "size-exceeded",
                    f"server announces {declared} bytes, the signed size is {digest.expected_size}",
                )
            written = 0
            while True:
                # Ask for at most one byte past the signed size, so an endless body
                # is refused after one extra byte rather than read to the end.
                want = min(CHUNK_SIZE, digest.expected_size - digest.received + 1)
                chunk = response.read(want)
                if not chunk:
                    return written
                digest.update(chunk)
                out.write(chunk)
                written += len(chunk)
    except urllib.error.HTTPError as e:
        raise DownloadFailed(f"HTTP {e.code} {e.reason} for {url}") from e
    except urllib.error.URLError as e:
        raise DownloadFailed(f"cannot fetch {url}: {e.reason}") from e
    except (OSError, ValueError, http.client.HTTPException) as e:  # timeouts, resets, short reads
        raise DownloadFailed(f"download of {url} broke off: {e}") from e
