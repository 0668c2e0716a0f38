"""Write-behind for the device registry, in a child process of its own.

Why a process: the registry costs about as much CPU per announcement as the
rest of the answer (SQL statements, SQLAlchemy, the install state machine), and
in one process it competes for the GIL with the MQTT thread — profiled under a
20,000-announcement burst, the registry thread held ~31% of the bridge's
samples. In a child process it runs on another core and the MQTT thread only
pays for handing events over (a few µs each, in batches).

The parent side, :class:`ProcessRegistryWriter`, has the same interface as the
in-process :class:`~broker_bridge.writer.RegistryWriter` (``put`` never blocks;
``flush``, ``stop``, ``backlog``...). Inside the child, a plain
``RegistryWriter`` does the work, with its batching, retry and bounded backlog
unchanged. Between them, one pipe carries

* parent → child: ``("events", [encoded event, ...])``, ``("flush", token,
  timeout)``, ``("stop", timeout)``, in order;
* child → parent: ``("status", written, dropped, failures)`` after each batch
  written (and every second while anything is pending), ``("flushed", token,
  ok)``, ``("stopped", lost)``.

Events cross the pipe as tuples of plain values (:func:`encode_event`), not
pickled models: ~1 µs each instead of ~15.

Nothing is lost silently. Events the parent could not hand over stay queued
in the parent; if the child dies, the events it had received but not written
are counted and logged as lost, and a new child takes over.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from typing import Any

from ota_core.models import Announcement, DeviceState, StatusReport
from ota_core.store.devices import AnnouncementSeen, OfferPushed, RegistryEvent, StatusSeen

log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
#: How long the parent lets events gather before sending a batch to the child.
SEND_LINGER_SECONDS = 0.005
#: How long the parent waits for a new child to say it is up before logging trouble.
RESTART_DELAY_SECONDS = 0.5

Encoded = tuple[Any, ...]


# -- events on the wire --------------------------------------------------------


def _micros(at: datetime) -> int:
    # Whole microseconds since the epoch: exact, unlike a float timestamp.
    return (at - _EPOCH) // _MICROSECOND


def _at(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def encode_event(event: RegistryEvent) -> Encoded:
    """A registry event as a tuple of plain values (cheap to pickle)."""
    if isinstance(event, AnnouncementSeen):
        a = event.announcement
        return (
            "A", event.device_id, a.build_id, a.version, a.hardware, a.channel,
            a.request_id, a.device_id, event.offered_build, _micros(event.at),
        )
    if isinstance(event, StatusSeen):
        r = event.report
        return (
            "S", event.device_id, r.state.value, r.build_id, r.detail, r.request_id,
            _micros(event.at),
        )
    return ("P", event.device_id, event.build_id, _micros(event.at))


def decode_event(item: Encoded) -> RegistryEvent:
    """The event :func:`encode_event` encoded. The values were validated in the bridge."""
    kind = item[0]
    if kind == "A":
        _, device_id, build_id, version, hardware, channel, request_id, payload_id, offered, at = (
            item
        )
        announcement = Announcement.model_construct(
            build_id=build_id, version=version, hardware=hardware, channel=channel,
            request_id=request_id, device_id=payload_id,
        )
        return AnnouncementSeen(device_id, announcement, offered, _at(at))
    if kind == "S":
        _, device_id, state, build_id, detail, request_id, at = item
        report = StatusReport.model_construct(
            state=DeviceState(state), build_id=build_id, detail=detail, request_id=request_id
        )
        return StatusSeen(device_id, report, _at(at))
    if kind == "P":
        _, device_id, build_id, at = item
        return OfferPushed(device_id, build_id, _at(at))
    raise ValueError(f"unknown registry event kind {kind!r}")


# -- the child process ----------------------------------------------------------


def _child_main(
    conn: Connection, database_url: str, log_level: str, log_format: str, max_backlog: int
) -> None:
    """The registry writer process: decode events, write them behind, report progress."""
    from broker_bridge.writer import RegistryWriter
    from ota_core.logs import configure_logging
    from ota_core.store.database import open_database
    from ota_core.store.devices import DeviceRegistry

    # Ctrl-C in a terminal, or a service manager stopping the whole process group, signals
    # this process too; the bridge decides when it stops (a "stop" message, or its end of
    # the pipe closing), so that what is queued here is written first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    configure_logging(log_level, log_format)
    send_lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with send_lock:
            conn.send(message)

    database = open_database(database_url, run_migrations=False)
    registry = DeviceRegistry(database)
    writer: RegistryWriter

    def report(_n: int = 0) -> None:
        # Also called on the writer thread after each batch: a bridge that has gone away
        # must not stop it (the main loop sees the closed pipe and writes what is left).
        with contextlib.suppress(OSError):
            send(("status", writer.written, writer.dropped, writer.failures))

    writer = RegistryWriter(registry.apply, max_backlog=max_backlog, on_written=report)
    writer.start()
    done = threading.Event()

    def heartbeat() -> None:  # progress while the database is failing (drops, failures)
        last: tuple[int, int, int] | None = None
        while not done.wait(1.0):
            now = (writer.written, writer.dropped, writer.failures)
            if now != last:
                last = now
                report()

    threading.Thread(target=heartbeat, name="ota-registry-heartbeat", daemon=True).start()
    try:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):  # the bridge is gone: write what we have, then exit
                writer.stop()
                return
            kind = message[0]
            if kind == "events":
                for item in message[1]:
                    writer.put(decode_event(item))
            elif kind == "flush":
                _, token, timeout = message
                ok = writer.flush(timeout)
                report()
                send(("flushed", token, ok))
            elif kind == "stop":
                lost = writer.stop(message[1])
                report()
                send(("stopped", lost))
                return
    finally:
        done.set()
        database.engine.dispose()


# -- the parent side -------------------------------------------------------------


@dataclass
class _Flush:
    token: int
    timeout: float
    done: threading.Event = field(default_factory=threading.Event)
    ok: bool = False


@dataclass
class _Stop:
    timeout: float


class ProcessRegistryWriter:
    """Registry write-behind in a child process; the interface of ``RegistryWriter``."""

    def __init__(
        self,
        database_url: str,
        *,
        log_level: str = "INFO",
        log_format: str = "text",
        max_batch: int = 500,
        max_backlog: int = 50_000,
    ) -> None:
        self._database_url = database_url
        self._log_level = log_level
        self._log_format = log_format
        self._max_batch = max_batch
        self._max_backlog = max_backlog
        self._queue: deque[RegistryEvent | _Flush | _Stop] = deque()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._tokens = itertools.count(1)
        self._flushes: dict[int, _Flush] = {}
        # Totals: sent to the current child, and what it reported back.
        self._sent = 0
        self._child_written = 0
        self._child_dropped = 0
        self._child_failures = 0
        # Totals over earlier children (restarts) and the parent's own drops.
        self._written_before = 0
        self._dropped_before = 0
        self._failures_before = 0
        self._lost = 0
        self._drop_logged_at = -float("inf")
        self._stopping = False
        self._stopped = threading.Event()
        self._conn: Connection | None = None
        self._process: Any = None
        self._sender: threading.Thread | None = None
        self._receiver: threading.Thread | None = None
        self._child_ready = threading.Event()

    # -- called from any thread -----------------------------------------

    def put(self, event: RegistryEvent) -> None:
        """Queue ``event``; never blocks on the database or the child."""
        if self.backlog >= self._max_backlog:
            self._drop_oldest()
        self._queue.append(event)
        if not self._wake.is_set():
            self._wake.set()

    @property
    def backlog(self) -> int:
        """Events not yet written: queued here, or handed to the child and pending there."""
        in_child = self._sent - self._child_written - self._child_dropped
        return len(self._queue) + max(0, in_child)

    @property
    def written(self) -> int:
        return self._written_before + self._child_written

    @property
    def dropped(self) -> int:
        """Events dropped because the backlog was full, or lost with a dead child."""
        return self._dropped_before + self._child_dropped

    @property
    def failures(self) -> int:
        return self._failures_before + self._child_failures

    @property
    def pid(self) -> int | None:
        """The child's process id (for metrics and tests)."""
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        if self._sender is not None:
            return
        self._stopping = False
        self._stopped.clear()
        self._spawn()
        self._sender = threading.Thread(
            target=self._send_loop, name="ota-registry-send", daemon=True
        )
        self._sender.start()

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued so far is in the database; False on timeout."""
        if self._sender is None:
            return not self._queue
        marker = _Flush(next(self._tokens), timeout)
        with self._lock:
            self._flushes[marker.token] = marker
        self._queue.append(marker)
        self._wake.set()
        finished = marker.done.wait(timeout + 1.0)
        with self._lock:
            self._flushes.pop(marker.token, None)
        return finished and marker.ok

    def stop(self, timeout: float = 10.0) -> int:
        """Write what is queued (the child retries for up to ``timeout`` s), stop the child,
        return the number of events lost."""
        sender = self._sender
        if sender is None:
            return 0
        self._queue.append(_Stop(timeout))
        self._wake.set()
        sender.join(timeout + 10)
        if not self._stopped.wait(timeout + 10):
            still = self.backlog
            log.error(
                "registry writer process did not stop in time; events lost events=%d", still
            )
            self._lost += still
        self._stopping = True
        if self._receiver is not None:
            self._receiver.join(5)
        if self._process is not None:
            self._process.join(5)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(5)
        if self._conn is not None:
            self._conn.close()
        self._sender = None
        self._receiver = None
        self._process = None
        self._conn = None
        return self._lost

    # -- the child --------------------------------------------------------

    def _spawn(self) -> None:
        context = multiprocessing.get_context("spawn")
        parent_end, child_end = context.Pipe()
        process = context.Process(
            target=_child_main,
            args=(
                child_end, self._database_url, self._log_level, self._log_format,
                self._max_backlog,
            ),
            name="ota-registry-writer",
            daemon=True,
        )
        process.start()
        child_end.close()
        with self._lock:
            self._conn = parent_end
            self._process = process
            self._sent = 0
            self._child_written = self._child_dropped = self._child_failures = 0
        self._receiver = threading.Thread(
            target=self._receive_loop, args=(parent_end, process), name="ota-registry-recv",
            daemon=True,
        )
        self._receiver.start()
        log.info("registry writer process started pid=%d", process.pid)

    def _child_died(self, process: Any) -> None:
        """The child went away unasked: count what it held, start another."""
        process.join(1)
        with self._lock:
            lost = max(0, self._sent - self._child_written - self._child_dropped)
            self._written_before += self._child_written
            self._dropped_before += self._child_dropped + lost
            self._failures_before += self._child_failures + 1
            self._lost += lost
            flushes = list(self._flushes.values())
        log.error(
            "registry writer process exited unexpectedly exitcode=%s; events lost=%d; restarting",
            process.exitcode, lost,
        )
        for marker in flushes:  # they waited on the dead child: report failure
            marker.done.set()
        time.sleep(RESTART_DELAY_SECONDS)
        if not self._stopping:
            self._spawn()

    def _receive_loop(self, conn: Connection, process: Any) -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                if self._stopping or self._stopped.is_set():
                    return
                self._child_died(process)
                return
            kind = message[0]
            if kind == "status":
                _, written, dropped, failures = message
                with self._lock:
                    self._child_written, self._child_dropped = written, dropped
                    self._child_failures = failures
            elif kind == "flushed":
                _, token, ok = message
                with self._lock:
                    marker = self._flushes.get(token)
                if marker is not None:
                    marker.ok = ok
                    marker.done.set()
            elif kind == "stopped":
                self._lost += message[1]
                self._stopped.set()
                return

    def _send(self, message: tuple[Any, ...], events: int = 0) -> bool:
        """Hand ``message`` to the current child, waiting out a restart. False: stopping."""
        while True:
            conn = self._conn
            try:
                if conn is None:
                    raise OSError("no child")
                conn.send(message)
            except OSError:
                if self._stopping:
                    return False
                time.sleep(0.05)  # the receiver is restarting the child
                continue
            if events:
                with self._lock:
                    if conn is self._conn:
                        self._sent += events
            return True

    def _send_loop(self) -> None:
        queue = self._queue
        while True:
            self._wake.wait()
            self._wake.clear()
            if len(queue) < self._max_batch:
                time.sleep(SEND_LINGER_SECONDS)  # let a batch gather: fewer, larger sends
            while queue:
                batch: list[Encoded] = []
                marker: _Flush | _Stop | None = None
                while len(batch) < self._max_batch:
                    try:
                        item = queue.popleft()
                    except IndexError:
                        break
                    if isinstance(item, _Flush | _Stop):
                        marker = item
                        break
                    batch.append(encode_event(item))
                if batch and not self._send(("events", batch), len(batch)):
                    return
                if isinstance(marker, _Flush):
                    self._send(("flush", marker.token, marker.timeout))
                elif isinstance(marker, _Stop):
                    self._send(("stop", marker.timeout))
                    return

    def _drop_oldest(self) -> None:
        try:
            item = self._queue.popleft()
        except IndexError:
            return
        if isinstance(item, _Flush | _Stop):  # never drop a marker: put it back
            self._queue.appendleft(item)
            return
        with self._lock:
            self._dropped_before += 1
        now = time.monotonic()
        if now - self._drop_logged_at >= 10.0:
            self._drop_logged_at = now
            log.error(
                "registry backlog full; dropping the oldest device events backlog=%d "
                "dropped_total=%d",
                self._max_backlog, self.dropped,
            )
