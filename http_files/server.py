"""Running the ASGI app under uvicorn: our process lifetime and zero-copy file sends."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
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


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` that sibling worker processes may bind too.

    With ``SO_REUSEPORT`` each worker has its own accept queue and the kernel spreads
    new connections over them, so keep-alive clients are shared out evenly (one
    inherited socket would let whichever worker wakes first accept a whole burst).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock


def run_workers(count: int, serve: Callable[[socket.socket], None], host: str, port: int) -> int:
    """Run ``serve(listening_socket)`` in ``count`` forked worker processes; wait for them.

    Call it before the process has threads, an event loop or database connections:
    each worker builds its own after the fork. SIGTERM and SIGINT to this process
    are passed on as SIGTERM (a graceful stop; a second SIGINT would force
    uvicorn's exit), and it returns when every worker has exited: 0 if all did
    cleanly. A worker that exits on its own takes the others down with it (exit
    code 1), so a broken deployment is visible instead of half-serving.
    """
    children: dict[int, int] = {}
    stopping = False

    def stop_all(_signum: int = 0, _frame: object = None) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    for index in range(count):
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                sock = reuseport_socket(host, port)
                serve(sock)
                code = 0
            except BaseException:
                logging.getLogger("ota.http").exception("HTTP worker %d failed", index + 1)
            finally:
                os._exit(code)
        children[pid] = index
    previous = {sig: signal.signal(sig, stop_all) for sig in (signal.SIGINT, signal.SIGTERM)}
    exit_code = 0
    try:
        while children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            if children.pop(pid, None) is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            if not stopping:
                logging.getLogger("ota.http").error(
                    "HTTP worker %d exited (%d); stopping the others", pid, code
                )
                exit_code = 1
                stop_all()
            elif code != 0:
                exit_code = 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return exit_code
