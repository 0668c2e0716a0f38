"""A small HTTP/1.1 download load generator: one process, N keep-alive connections.

Run as ``python -m bench.httpload --json '{...}'`` (bench/downloads.py starts
several at once). Each connection sends a GET, reads the response head, reads and
discards the body (``recv_into`` one reused buffer) and checks that the status is
the expected one and that exactly ``Content-Length`` bytes came, then sends the
next request on the same connection. One ``selectors`` loop drives all
connections, so a process costs little CPU per byte.

Modes:

* ``full``: ``GET path`` → 200 with the whole file.
* ``range``: ``GET path`` with ``Range: bytes=a-b``, a random slice of
  ``range_size`` bytes aligned to it → 206 with a matching ``Content-Range``.
* ``seed``: before its first download, each connection asks the product
  ``POST /check-update`` (as the seed's device does) and downloads from the
  ``url`` of the offer, wherever that points (e.g. nginx via
  ``OTA_PACKAGE_BASE_URL``).

The process waits until the wall-clock ``start_at``, runs ``warmup`` seconds,
counts body bytes and completed responses for ``duration`` seconds, then stops
sending, lets the responses in flight finish and prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import random
import selectors
import socket
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

BUFFER = 1 << 20


@dataclass
class Target:
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urllib.parse.urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 80, parts.path)


@dataclass
class Conn:
    target: Target
    sock: socket.socket | None = None
    head: bytearray = field(default_factory=bytearray)
    remaining: int = -1  # body bytes still to read; -1 while reading the head
    expect_status: int = 200
    expect_length: int = 0
    expect_range: str = ""
    close_after: bool = False
    busy: bool = False


class Load:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.mode: str = spec["mode"]
        self.size: int = spec["size"]
        self.range_size: int = spec.get("range_size", 0)
        self.sel = selectors.DefaultSelector()
        self.buf = memoryview(bytearray(BUFFER))
        self.counting = False
        self.sending = True
        self.bytes = 0
        self.responses = 0
        self.errors: list[str] = []
        self.check_updates = 0
        self.rng = random.Random()

    # -- connections -------------------------------------------------------
    def target_for(self, index: int) -> Target:
        if self.mode != "seed":
            return Target.parse(self.spec["url"])
        body = json.dumps(
            {"device_id": f"bench-{self.spec['tag']}-{index}", "build_id": self.spec["build_id"]}
        ).encode()
        request = urllib.request.Request(
            self.spec["check_update"],
            data=body,
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            offer = json.loads(response.read())
        self.check_updates += 1
        if offer.get("status") != "update-available" or offer.get("size") != self.size:
            raise RuntimeError(f"unexpected offer: {offer}")
        return Target.parse(offer["url"])

    def connect(self, conn: Conn) -> None:
        sock = socket.create_connection((conn.target.host, conn.target.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        conn.sock = sock
        self.sel.register(sock, selectors.EVENT_READ, conn)

    def close(self, conn: Conn) -> None:
        if conn.sock is not None:
            self.sel.unregister(conn.sock)
            conn.sock.close()
            conn.sock = None

    # -- requests ----------------------------------------------------------
    def send_request(self, conn: Conn) -> None:
        if conn.sock is None:
            self.connect(conn)
        assert conn.sock is not None
        target = conn.target
        lines = [f"GET {target.path} HTTP/1.1", f"Host: {target.host}:{target.port}"]
        if self.mode == "range":
            slices = max(1, self.size // self.range_size)
            start = self.rng.randrange(slices) * self.range_size
            end = min(self.size, start + self.range_size) - 1
            lines.append(f"Range: bytes={start}-{end}")
            conn.expect_status = 206
            conn.expect_length = end - start + 1
            conn.expect_range = f"bytes {start}-{end}/{self.size}"
        else:
            conn.expect_status = 200
            conn.expect_length = self.size
            conn.expect_range = ""
        request = ("\r\n".join(lines) + "\r\n\r\n").encode()
        conn.sock.setblocking(True)
        conn.sock.sendall(request)
        conn.sock.setblocking(False)
        conn.head.clear()
        conn.remaining = -1
        conn.busy = True

    def on_head(self, conn: Conn, data: bytes) -> None:
        conn.head += data
        end = conn.head.find(b"\r\n\r\n")
        if end < 0:
            if len(conn.head) > 65536:
                raise RuntimeError("response head over 64 KiB")
            return
        head = bytes(conn.head[:end]).decode("latin-1").split("\r\n")
        rest = len(conn.head) - end - 4
        status = int(head[0].split(" ", 2)[1])
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "-1"))
        if status != conn.expect_status or length != conn.expect_length:
            raise RuntimeError(
                f"{head[0]!r} content-length {length}; expected {conn.expect_status} "
                f"with {conn.expect_length} bytes"
            )
        if conn.expect_range and headers.get("content-range") != conn.expect_range:
            raise RuntimeError(
                f"content-range {headers.get('content-range')!r}, expected {conn.expect_range!r}"
            )
        conn.close_after = headers.get("connection", "").lower() == "close"
        conn.remaining = length - rest
        if rest > length:
            raise RuntimeError("more body than Content-Length")
        if self.counting:
            self.bytes += rest

    def on_complete(self, conn: Conn) -> None:
        conn.busy = False
        if self.counting:
            self.responses += 1
        if conn.close_after:
            self.close(conn)
        if self.sending:
            self.send_request(conn)

    def on_readable(self, conn: Conn) -> None:
        assert conn.sock is not None
        if conn.remaining < 0:
            try:
                data = conn.sock.recv(65536)
            except BlockingIOError:
                return
            if not data:
                raise RuntimeError("server closed the connection mid-response")
            self.on_head(conn, data)
        else:
            try:
                n = conn.sock.recv_into(self.buf, min(BUFFER, conn.remaining) or 1)
            except BlockingIOError:
                return
            if n == 0:
                raise RuntimeError(f"server closed with {conn.remaining} body bytes to go")
            if n > conn.remaining:
                raise RuntimeError("more body than Content-Length")
            conn.remaining -= n
            if self.counting:
                self.bytes += n
        if conn.remaining == 0:
            self.on_complete(conn)

    # -- the run -----------------------------------------------------------
    def run(self) -> dict[str, Any]:
        conns = [Conn(self.target_for(i)) for i in range(self.spec["connections"])]
        for conn in conns:
            self.connect(conn)
        delay = self.spec["start_at"] - time.time()
        if delay > 0:
            time.sleep(delay)
        t0 = time.monotonic()
        count_from = t0 + self.spec["warmup"]
        count_until = count_from + self.spec["duration"]
        drain_until = count_until + 10
        for conn in conns:
            self.send_request(conn)
        counted_from = counted_until = 0.0
        while True:
            now = time.monotonic()
            if not self.counting and self.sending and now >= count_from:
                self.counting, counted_from = True, now
            if self.sending and now >= count_until:
                self.counting, self.sending, counted_until = False, False, now
            if not self.sending and (not any(c.busy for c in conns) or now > drain_until):
                break
            for key, _ in self.sel.select(timeout=0.05):
                try:
                    self.on_readable(key.data)
                except (RuntimeError, OSError, ValueError) as e:
                    self.errors.append(str(e))
                    conn = key.data
                    conn.busy = False
                    self.close(conn)
                    if len(self.errors) > 20:
                        self.sending = self.counting = False
                    elif self.sending:
                        self.send_request(conn)
        for conn in conns:
            self.close(conn)
        return {
            "bytes": self.bytes,
            "responses": self.responses,
            "seconds": max(counted_until - counted_from, 1e-9),
            "errors": self.errors[:5],
            "error_count": len(self.errors),
            "check_updates": self.check_updates,
            "targets": sorted({f"{c.target.host}:{c.target.port}{c.target.path}" for c in conns}),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True, help="the load's spec, a JSON object")
    spec = json.loads(parser.parse_args().json)
    print(json.dumps(Load(spec).run()), flush=True)


if __name__ == "__main__":
    main()
