"""Per-device rate limiting and the duplicate-reply cache (sans-IO: time is passed in).

Both sit in front of the handler on the MQTT thread, so both are O(1) per
message and bounded in memory whatever devices send.

* :class:`DeviceRateLimiter` — a token bucket per device id: ``burst``
  messages at once, then ``rate`` per second. A device flooding its topics
  (a bug, a reboot loop, an attacker holding one device's credentials) costs
  the bridge a dictionary lookup per message, not a policy decision, a signed
  offer and a database row. It also remembers, per window, whom it limited, so
  the bridge logs one line per device per window instead of one per message.
* :class:`ReplyCache` — the last answer to each announcement carrying a
  ``request_id``, for a short time. MQTT QoS 1 is at-least-once: a device (or
  the broker, after a reconnect) may deliver the same announcement twice, and
  it must get the same answer, byte for byte, without being recorded twice.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class WindowReport:
    """What the limiter dropped since the last report."""

    dropped: int
    devices: int
    #: The devices that were limited most, with their drop counts (a few, for the log).
    top: list[tuple[str, int]]


class DeviceRateLimiter:
    """Token bucket per device; ``max_devices`` buckets at most (about 150 bytes each).

    Not thread-safe: used from the MQTT thread only (``end_window`` from another
    thread is fine: it swaps the window's dict out in one step).
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_devices: int = 100_000,
        max_window_devices: int = 1_000,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = float(burst)
        self._max_devices = max_devices
        self._max_window_devices = max_window_devices
        # device id -> (tokens left, time of that count)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._window: dict[str, int] = {}
        self._window_other = 0  # drops by devices past max_window_devices

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, device_id: str, now: float) -> bool:
        """Take one token for ``device_id``; False when its bucket is empty."""
        bucket = self._buckets.get(device_id)
        if bucket is None:
            if len(self._buckets) >= self._max_devices:
                self._shrink(now)
            self._buckets[device_id] = (self.burst - 1.0, now)
            return True
        tokens, then = bucket
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens >= 1.0:
            self._buckets[device_id] = (tokens - 1.0, now)
            return True
        self._buckets[device_id] = (tokens, now)
        return False

    def note_drop(self, device_id: str) -> bool:
        """Count a drop in this window; True for the device's first one (log that)."""
        window = self._window
        count = window.get(device_id)
        if count is not None:
            window[device_id] = count + 1
            return False
        if len(window) >= self._max_window_devices:
            self._window_other += 1
            return False
        window[device_id] = 1
        return True

    def end_window(self, top: int = 3) -> WindowReport:
        """Start a new window; what the last one dropped."""
        window, self._window = self._window, {}
        other, self._window_other = self._window_other, 0
        worst = sorted(window.items(), key=lambda item: item[1], reverse=True)[:top]
        return WindowReport(sum(window.values()) + other, len(window) + bool(other), worst)

    def _shrink(self, now: float) -> None:
        """Forget full buckets (a full bucket is the same as none); then the oldest half."""
        burst, rate = self.burst, self.rate
        self._buckets = {
            k: (t, then)
            for k, (t, then) in self._buckets.items()
            if t + (now - then) * rate < burst
        }
        excess = len(self._buckets) - self._max_devices // 2
        if excess > 0:  # many devices limited at once: forgive the oldest, stay bounded
            for key in list(self._buckets)[:excess]:
                del self._buckets[key]


@dataclass(frozen=True, slots=True)
class CachedReply:
    stamp: object
    expires: float
    topic: str
    payload: bytes


class ReplyCache:
    """The last reply per (topic, payload) of announcements with a request id. Thread-safe.

    Keyed by the raw bytes rather than the parsed (device_id, request_id): an
    exact duplicate has the same topic and payload, so a hit costs no JSON
    parsing, and the same request id with a different payload (a device that
    reuses ids) is not mistaken for a duplicate. An entry is only used while
    its ``stamp`` is current — the bridge stamps with the catalog revision and
    the offer key id: a release published meanwhile must not be hidden by a
    cached "up-to-date", nor a rotated-out key keep signing.
    """

    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._entries: OrderedDict[tuple[str, bytes], CachedReply] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, topic: str, payload: bytes, stamp: object, now: float) -> CachedReply | None:
        key = (topic, payload)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry.expires <= now or entry.stamp != stamp:
                del self._entries[key]
                return None
            return entry

    def put(
        self,
        topic: str,
        payload: bytes,
        stamp: object,
        reply_topic: str,
        reply: bytes,
        now: float,
    ) -> None:
        key = (topic, payload)
        entry = CachedReply(stamp, now + self._ttl, reply_topic, reply)
        with self._lock:
            entries = self._entries
            entries[key] = entry
            entries.move_to_end(key)
            # Entries are added in time order, so the oldest are first: expire from the front.
            while entries:
                first = next(iter(entries.values()))
                if len(entries) > self._max or first.expires <= now:
                    entries.popitem(last=False)
                else:
                    break
