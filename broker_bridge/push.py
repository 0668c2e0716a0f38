"""Push: offers sent to known devices when the catalog changes, without waiting to be asked.

When the catalog revision moves (a release added, a rollout created, advanced
or resumed — by this process or by the admin side in another one; the revision
in the database is how they coordinate), :class:`Pusher` walks the device
registry in device id order, asks the policy which release each known device
would be offered *now* (``decide``: channel, hardware, version order and
rollout cohorts, exactly as for an announcement), and pushes that offer where
it is an update the device was not offered before (no install row for that
device and build).

* It runs on its own thread and never blocks the MQTT callback thread; offers
  go out through paho's thread-safe ``publish`` at QoS 1, without a request id
  (the envelope's nonce is null: a device tells a push from an answer by that),
  and without waiting for each PUBACK: paho keeps its in-flight window full
  and the pusher stays at most ``MAX_PUSH_BACKLOG`` offers ahead of the broker's
  acknowledgements, so a large fleet does not pile up in memory.
* By default it is not paced: a release reaches the fleet as fast as the broker
  takes it (measured in ``bench/push_fanout.py``). ``OTA_PUSH_RATE`` (offers/s,
  a token bucket) paces it where the broker or the devices' network must be
  spared.
* The per-device work is what must be per device: each offer is claimed in
  large batches (one transaction per ``claim chunk``), and built with
  :meth:`~ota_core.offers.OfferBuilder.update_offer_bytes`: the device id and
  the time go into the envelope, which is signed (Ed25519) for that device;
  the rest of the offer is the release's bytes, serialised once.
* A newer revision during a pass abandons the pass and starts a new one from
  the newest catalog: what was pushed already is recorded, so it is not pushed
  again, and every device's offer is decided from the newest catalog.
* Devices offline with a persistent session get the push when they return:
  the broker queues QoS 1 messages for them.
* A pass also runs when the bridge starts, which catches up on releases
  published while no bridge was running.

Several bridges (replicas on a shared subscription) each see the revision move
and each run a pass. They do not double-push: before publishing, a bridge
*claims* each (device, build) by inserting its "offered" install row
(:meth:`~ota_core.store.devices.DeviceRegistry.claim_offers`, insert-if-absent
in one transaction per chunk); only the bridge whose insert succeeded
publishes. The cost is that every replica still reads the registry and runs
the policy for every device. For very large fleets the next step is to split
that work too: each replica takes the devices whose hash falls in its
partition (``hash(device_id) % replicas == index``), with the claim kept as
the safety net when replicas come and go.

A claimed offer whose publish is lost (the bridge killed between the claim
and the publish) is not pushed again; the device still gets it the next time
it announces, since answers never depend on what was recorded.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from ota_core.catalog import Catalog
from ota_core.errors import OtaError
from ota_core.models import DeviceFacts, Release
from ota_core.offers import OfferBuilder
from ota_core.policy import decide
from ota_core.store.devices import DeviceRegistry, OfferPushed
from ota_core.topics import TopicScheme

log = logging.getLogger(__name__)

#: Devices read from the registry per page.
PAGE_SIZE = 1000
#: Pushes claimed per transaction, at most; fewer when paced (about 0.2 s of pacing),
#: so claims never run far ahead of the publishes they stand for.
MAX_CLAIM_CHUNK = 1000
#: Offers published and not yet acknowledged by the broker, at most, before the
#: pusher waits (paho queues what is beyond its in-flight window in memory).
MAX_PUSH_BACKLOG = 2000
RETRY_SECONDS = 2.0

Publish = Callable[[str, bytes], None]


class Pacer:
    """A blocking token bucket: ``rate`` per second, up to ``burst`` at once."""

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = max(1.0, burst)
        self._clock = clock
        self._tokens = self.burst
        self._then = clock()

    def take(self, stop: threading.Event) -> bool:
        """Wait for one token; False if ``stop`` was set meanwhile."""
        while True:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._then) * self.rate)
            self._then = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            # At least a millisecond: float rounding must not turn this into a busy loop.
            if stop.wait(max(0.001, (1.0 - self._tokens) / self.rate)):
                return False


@dataclass
class PushStats:
    passes: int = 0  # passes that went through every known device
    restarts: int = 0  # passes abandoned for a newer revision
    pushed: int = 0  # offers published
    already_offered: int = 0  # updates skipped: the device had been offered that build
    claimed_elsewhere: int = 0  # updates skipped: another bridge claimed them first
    failures: int = 0


class Pusher:
    """The push worker thread. ``wake()`` after the catalog revision moved."""

    def __init__(
        self,
        *,
        registry: DeviceRegistry,
        catalog: Callable[[], Catalog],
        offers: Callable[[], OfferBuilder],
        topics: TopicScheme,
        publish: Publish,
        rate: float = math.inf,
        connected: Callable[[], bool] = lambda: True,
        backlog: Callable[[], int] | None = None,
    ) -> None:
        """``rate``: offers per second (``inf``: unpaced). ``backlog``: offers published
        and not yet acknowledged; the pusher keeps it under ``MAX_PUSH_BACKLOG``."""
        self._registry = registry
        self._catalog = catalog
        self._offers = offers
        self._topics = topics
        self._publish = publish
        self._connected = connected
        self._backlog = backlog
        paced = math.isfinite(rate)
        self._pacer = Pacer(rate, burst=rate / 10) if paced else None
        self._claim_chunk = (
            max(1, min(MAX_CLAIM_CHUNK, int(rate / 5))) if paced else MAX_CLAIM_CHUNK
        )
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._done = threading.Condition()
        self._failing = False
        self.stats = PushStats()
        #: The newest catalog revision a pass went through completely (-1: none yet).
        self.completed_revision = -1

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        self._wake.set()  # a first pass: releases published while no bridge ran
        self._thread = threading.Thread(target=self._run, name="ota-push", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping.set()
        self._wake.set()
        thread.join(timeout)

    def wait_for_revision(self, revision: int, timeout: float) -> bool:
        """Wait until a pass at ``revision`` or newer went through every device."""
        with self._done:
            return self._done.wait_for(lambda: self.completed_revision >= revision, timeout)

    # -- the worker thread ----------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait()
            self._wake.clear()
            if self._stopping.is_set():
                return
            catalog = self._catalog()
            try:
                finished = self._pass(catalog)
            except Exception as e:  # the database went away, or a bug: retry later
                self.stats.failures += 1
                if isinstance(e, OtaError):  # the database: say so once, not every retry
                    if not self._failing:
                        log.warning(
                            "push pass failed revision=%d; retrying every %.0fs error=%s",
                            catalog.revision, RETRY_SECONDS, _one_line(e),
                        )
                    self._failing = True
                else:
                    log.exception("push pass failed unexpectedly revision=%d", catalog.revision)
                if self._stopping.wait(RETRY_SECONDS):
                    return
                self._wake.set()
                continue
            if self._failing:
                log.info("push recovered revision=%d", catalog.revision)
                self._failing = False
            if finished:
                self.stats.passes += 1
                with self._done:
                    self.completed_revision = max(self.completed_revision, catalog.revision)
                    self._done.notify_all()

    def _abandon(self, catalog: Catalog, pushed: int) -> bool:
        """Stop this pass when stopping, or when a newer catalog arrived (then start over)."""
        if self._stopping.is_set():
            return True
        if self._catalog().revision == catalog.revision:
            return False
        self.stats.restarts += 1
        log.info(
            "push restarting for a newer catalog revision=%d pushed=%d", catalog.revision, pushed
        )
        self._wake.set()
        return True

    def _pass(self, catalog: Catalog) -> bool:
        """Push what ``catalog`` offers to every known device; False if abandoned."""
        if not len(catalog):
            return True
        pushed = skipped = 0
        after: str | None = None
        while True:
            if self._abandon(catalog, pushed):
                return False
            page = self._registry.known_devices(after, PAGE_SIZE)
            if not page:
                break
            after = page[-1].device_id
            todo, already = self._updates(catalog, page)
            skipped += already
            for start in range(0, len(todo), self._claim_chunk):
                # Between chunks too: at a low rate a page takes minutes to push.
                if start and self._abandon(catalog, pushed):
                    return False
                if not self._wait_connected():
                    return False
                pushed += self._claim_and_publish(todo[start : start + self._claim_chunk])
        if pushed or skipped:
            log.info(
                "push done revision=%d pushed=%d already_offered=%d",
                catalog.revision, pushed, skipped,
            )
        return True

    def _updates(
        self, catalog: Catalog, page: Sequence[DeviceFacts]
    ) -> tuple[list[tuple[DeviceFacts, Release]], int]:
        """The page's devices that ``catalog`` offers an update they were never offered."""
        candidates: list[tuple[DeviceFacts, Release]] = []
        for facts in page:
            try:
                release = decide(catalog, facts).release
            except OtaError:  # a build the catalog does not know, and no version: nothing to do
                continue
            if release is not None:
                candidates.append((facts, release))
        if not candidates:
            return [], 0
        offered = self._registry.existing_installs(
            [facts.device_id for facts, _ in candidates], {r.build_id for _, r in candidates}
        )
        todo = [(f, r) for f, r in candidates if (f.device_id, r.build_id) not in offered]
        already = len(candidates) - len(todo)
        self.stats.already_offered += already
        return todo, already

    def _claim_and_publish(self, chunk: Sequence[tuple[DeviceFacts, Release]]) -> int:
        now = datetime.now(UTC)
        releases = {(f.device_id, r.build_id): r for f, r in chunk}
        claimed = self._registry.claim_offers(
            [OfferPushed(f.device_id, r.build_id, now) for f, r in chunk]
        )
        self.stats.claimed_elsewhere += len(chunk) - len(claimed)
        offers = self._offers()
        pacer, topics, publish = self._pacer, self._topics, self._publish
        debug = log.isEnabledFor(logging.DEBUG)
        for push in claimed:
            # Claimed means recorded as offered: publish each, even when stopping (unpaced
            # then), or the device would only learn of it by announcing.
            if not self._stopping.is_set():
                if pacer is not None:
                    pacer.take(self._stopping)
                self._wait_backlog()
            release = releases[(push.device_id, push.build_id)]
            payload = offers.update_offer_bytes(release, push.device_id, None)
            self.stats.pushed += 1  # counted first: whoever sees the offer sees the count
            publish(str(topics.offer(push.device_id)), payload)
            if debug:
                log.debug("push device_id=%s build_id=%s", push.device_id, push.build_id)
        return len(claimed)

    def _wait_backlog(self) -> None:
        """Stay at most ``MAX_PUSH_BACKLOG`` offers ahead of the broker's PUBACKs."""
        backlog = self._backlog
        if backlog is None or backlog() < MAX_PUSH_BACKLOG:
            return
        while backlog() >= MAX_PUSH_BACKLOG and self._connected():
            if self._stopping.wait(0.002):
                return

    def _wait_connected(self) -> bool:
        """Hold pushes while the broker is away (paho would only pile them up in memory)."""
        while not self._connected():
            if self._stopping.wait(0.2):
                return False
        return True


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"
