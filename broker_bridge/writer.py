"""Write-behind for the device registry.

The MQTT callback thread must never wait for the database, so it only appends
registry events to a queue (:meth:`RegistryWriter.put`, a lock-free deque
append). One writer thread drains the queue in batches — after a short linger,
or at once when a full batch is waiting — and writes each batch in one
transaction with ``DeviceRegistry.apply``.

Events are written one by one, in arrival order: the registry keeps history
and an install state machine, so no event may be merged or reordered.

Nothing is dropped silently: a failing write is logged and retried with
backoff, with the events kept in memory meanwhile. Memory is bounded by
``max_backlog``: past it (a long database outage, or a registry slower than
the message rate) the *oldest* events are dropped — counted, and logged as an
error. Events still unwritten when :meth:`RegistryWriter.stop` gives up are
counted in an error log line too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from ota_core.store.devices import RegistryEvent

log = logging.getLogger(__name__)

ApplyBatch = Callable[[Sequence[RegistryEvent]], None]

class RegistryWriter:
    """One background thread writing registry events in batches.

    ``max_batch`` events per transaction; ``linger`` seconds to let a batch
    fill before writing (so a burst costs a few transactions, not thousands);
    ``max_backlog`` events kept in memory at most (about 1 KB each);
    ``on_written(n)`` is called on the writer thread after each batch of ``n``
    events is committed.
    """

    def __init__(
        self,
        apply: ApplyBatch,
        *,
        max_batch: int = 500,
        linger: float = 0.05,
        retry_min: float = 0.5,
        retry_max: float = 10.0,
        max_backlog: int = 50_000,
        on_written: Callable[[int], None] | None = None,
    ) -> None:
        self._apply = apply
        self._on_written = on_written
        self._max_batch = max_batch
        self._linger = linger
        self._retry_min = retry_min
        self._retry_max = retry_max
        self._max_backlog = max_backlog
        self._dropped = 0
        self._drop_logged_at = -float("inf")
        self._queue: deque[RegistryEvent] = deque()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._idle = threading.Condition()
        self._busy = False
        self._thread: threading.Thread | None = None
        self._written = 0
        self._failures = 0
        self._unwritten = 0
        self._give_up_at = float("inf")

    # -- called from any thread -----------------------------------------

    def put(self, event: RegistryEvent) -> None:
        """Queue ``event``; never blocks on the database."""
        if len(self._queue) >= self._max_backlog:
            self._drop_oldest()
        self._queue.append(event)
        if not self._wake.is_set():
            self._wake.set()

    @property
    def backlog(self) -> int:
        return len(self._queue)

    @property
    def dropped(self) -> int:
        """Events dropped because the backlog was full."""
        return self._dropped

    @property
    def written(self) -> int:
        return self._written

    @property
    def failures(self) -> int:
        return self._failures

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="ota-registry-writer", daemon=True)
        self._thread.start()

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued so far is written; False on timeout."""
        deadline = time.monotonic() + timeout
        self._wake.set()
        with self._idle:
            while self._queue or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(min(remaining, 0.05))
        return True

    def stop(self, timeout: float = 10.0) -> int:
        """Write what is queued (retrying for up to ``timeout`` s), stop, return events lost."""
        thread = self._thread
        if thread is None:
            return 0
        self._give_up_at = time.monotonic() + timeout
        self._stopping.set()
        self._wake.set()
        thread.join(timeout + 5)
        self._thread = None
        return self._unwritten

    # -- the writer thread ------------------------------------------------

    def _run(self) -> None:
        batch: list[RegistryEvent] = []  # taken from the queue, not yet written
        delay = self._retry_min
        while True:
            if not batch:
                self._set_busy(False)
                if self._stopping.is_set() and not self._queue:
                    return
                self._wake.wait()
                self._wake.clear()
                self._set_busy(True)
                # Let a batch build up, unless one is already full or we are stopping.
                if len(self._queue) < self._max_batch and not self._stopping.is_set():
                    self._stopping.wait(self._linger)
                batch = self._drain(self._max_batch)
                if not batch:
                    continue
            try:
                self._apply(batch)
            except Exception as e:  # any database failure: keep the batch, retry later
                self._failures += 1
                if self._stopping.is_set() and time.monotonic() >= self._give_up_at:
                    self._unwritten = len(batch) + len(self._queue)
                    log.error(
                        "registry write failed at shutdown; events lost events=%d error=%s",
                        self._unwritten, _one_line(e),
                    )
                    return
                log.warning(
                    "registry write failed; keeping events and retrying "
                    "events=%d retry_in=%.1fs error=%s",
                    len(batch) + len(self._queue), delay, _one_line(e),
                )
                if self._stopping.is_set():
                    time.sleep(min(delay, 0.5))  # shutting down: retry briskly until give-up
                else:
                    self._stopping.wait(delay)
                delay = min(delay * 2, self._retry_max)
                continue
            if delay > self._retry_min:
                log.info("registry writes recovered events=%d", len(batch))
            delay = self._retry_min
            self._written += len(batch)
            if self._on_written is not None:
                self._on_written(len(batch))
            # Keep going without waiting while a backlog is queued.
            batch = self._drain(self._max_batch)

    def _drop_oldest(self) -> None:
        try:
            self._queue.popleft()
        except IndexError:  # the writer just drained it
            return
        self._dropped += 1
        now = time.monotonic()
        if now - self._drop_logged_at >= 10.0:  # loud, but not one line per message
            self._drop_logged_at = now
            log.error(
                "registry backlog full; dropping the oldest device events "
                "backlog=%d dropped_total=%d",
                self._max_backlog, self._dropped,
            )

    def _drain(self, limit: int) -> list[RegistryEvent]:
        out: list[RegistryEvent] = []
        pop = self._queue.popleft
        try:
            while len(out) < limit:
                out.append(pop())
        except IndexError:
            pass
        return out

    def _set_busy(self, busy: bool) -> None:
        with self._idle:
            self._busy = busy
            if not busy:
                self._idle.notify_all()


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"
