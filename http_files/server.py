"""Running the ASGI app under uvicorn: our process lifetime and zero-copy file sends."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any, BinaryIO

import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp
from uvicorn._types import ASGISendEvent
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from http_files.fastpath import FastDownloads


class GracefulServer(uvicorn.Server):
    """A uvicorn server whose signals only ask it to stop.

    Plain uvicorn re-raises SIGTERM/SIGINT after its own shutdown, which kills
    the process before ``ota run`` can stop the bridge and flush its pending
    registry writes. The caller owns the process; the exit code stays 0.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {
            sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class _ZeroCopyCycle(RequestResponseCycle):
    """uvicorn's httptools request cycle plus the ASGI zero-copy extensions.

    ``http.response.pathsend`` (a whole file; Starlette's FileResponse uses it for
    plain GETs) and ``http.response.zerocopysend`` (a file object with an offset
    and a count; our package route uses it for single ranges) are written with
    :meth:`asyncio.loop.sendfile`: ``os.sendfile`` from the page cache to the
    socket, no copy through Python. The loop falls back to read-and-write by
    itself where sendfile is unavailable (TLS, other loops). Every other message
    goes through uvicorn unchanged, including ``Content-Length`` accounting.
    """

    async def send(self, message: ASGISendEvent) -> None:
        # uvicorn's message types do not know the two extensions: read them untyped.
        kind: str = message["type"]
        if kind not in ("http.response.pathsend", "http.response.zerocopysend"):
            await super().send(message)
            return
        fields: dict[str, Any] = dict(message)
        if kind == "http.response.pathsend":
            with open(fields["path"], "rb") as file:  # a local file: open does not wait on I/O
                await self._send_file(file, 0, None, more_body=False)
        else:
            await self._send_file(
                fields["file"],
                fields.get("offset"),
                fields.get("count"),
                fields.get("more_body", False),
            )

    async def _send_file(
        self, file: BinaryIO, offset: int | None, count: int | None, more_body: bool
    ) -> None:
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        if not self.response_started or self.response_complete:
            raise RuntimeError("a zero-copy send must come between the response start and its end")
        if self.chunked_encoding:
            raise RuntimeError("a zero-copy send needs a Content-Length response")
        if offset is None:
            offset = file.tell()
        if count is None:
            count = os.fstat(file.fileno()).st_size - offset
        if count > self.expected_content_length:
            raise RuntimeError("Response content longer than Content-Length")
        if self.scope["method"] != "HEAD" and count:
            if self.transport.is_closing():
                self.disconnected = True
                return
            try:
                sent = self._sendfile_now(file, offset, count)
                if sent < count:
                    sent += await asyncio.get_running_loop().sendfile(
                        self.transport, file, offset + sent, count - sent
                    )
            except ConnectionError:
                # The peer went away mid-file: handled as a disconnect.
                self.disconnected = True
                self.transport.close()
                return
            if sent != count:
                raise RuntimeError(f"file shorter than expected: sent {sent} of {count} bytes")
        self.expected_content_length -= count
        if not more_body:
            await super().send({"type": "http.response.body", "body": b"", "more_body": False})

    def _sendfile_now(self, file: BinaryIO, offset: int, count: int) -> int:
        """As much of the slice as the socket takes right now, by plain ``os.sendfile``.

        A 1 MiB file usually fits the socket buffer of a local or fast link at once:
        the event loop's ``sendfile`` (futures, pausing reads, a writer callback) is
        then only needed for what is left. Plain TCP transports with nothing buffered
        only (TLS must go through its transport; buffered bytes must go first).
        """
        transport = self.transport
        if transport.get_write_buffer_size() or transport.get_extra_info("ssl_object"):
            return 0
        sock = transport.get_extra_info("socket")
        if sock is None:
            return 0
        out_fd, in_fd, sent = sock.fileno(), file.fileno(), 0
        while sent < count:
            try:
                n = os.sendfile(out_fd, in_fd, offset + sent, count - sent)
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionError:
                raise
            except OSError:
                break  # e.g. a file sendfile cannot read: the loop falls back by itself
            if n == 0:
                break
            sent += n
        return sent


class ZeroCopyHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools HTTP/1.1 protocol, advertising and serving zero-copy sends."""

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = {"http.response.pathsend": {}, "http.response.zerocopysend": {}}

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        # uvicorn builds its own cycle class; the ASGI task it started looks ``send`` up
        # only when it first runs, so giving the new cycle our subclass here is enough.
        if type(self.cycle) is RequestResponseCycle:
            self.cycle.__class__ = _ZeroCopyCycle


def uvicorn_config(app: ASGIApp, *, fast_downloads: bool = True, **options: Any) -> uvicorn.Config:
    """The uvicorn settings every ``ota`` HTTP server runs with (tests use them too).

    The product's app (:func:`http_files.app.create_app`) is served behind the
    download fast path (:class:`http_files.fastpath.FastDownloads`) unless
    ``fast_downloads`` is False (tests compare both).
    """
    if fast_downloads and isinstance(app, FastAPI) and getattr(app.state, "services", None):
        app = FastDownloads(app)
    return uvicorn.Config(app, http=ZeroCopyHttpToolsProtocol, **options)
