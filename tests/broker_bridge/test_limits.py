"""Rate limiter, reply cache and push pacer, with a hand-driven clock (sans-IO)."""

from __future__ import annotations

import threading

import pytest

from broker_bridge.limits import DeviceRateLimiter, ReplyCache
from broker_bridge.push import Pacer


def test_a_device_gets_its_burst_then_the_rate() -> None:
    limiter = DeviceRateLimiter(rate=2.0, burst=5)
    assert [limiter.allow("d", 0.0) for _ in range(7)] == [True] * 5 + [False] * 2
    assert limiter.allow("d", 0.5)  # one token back after 0.5 s at 2/s
    assert not limiter.allow("d", 0.5)
    assert limiter.allow("other", 0.5)  # per device: others are not affected
    assert [limiter.allow("d", 100.0) for _ in range(6)] == [True] * 5 + [False]  # capped


def test_a_flood_never_refills_faster_than_the_rate() -> None:
    limiter = DeviceRateLimiter(rate=10.0, burst=20)
    allowed = sum(limiter.allow("d", n / 1000) for n in range(10_000))  # 1,000/s for 10 s
    assert allowed <= 20 + 10 * 10 + 1


def test_drops_are_reported_once_per_device_per_window() -> None:
    limiter = DeviceRateLimiter(rate=1.0, burst=1, max_window_devices=2)
    assert limiter.note_drop("a") is True
    assert [limiter.note_drop("a") for _ in range(998)] == [False] * 998
    assert limiter.note_drop("b") is True
    assert limiter.note_drop("c") is False  # past the window's bound: counted, not listed
    report = limiter.end_window()
    assert (report.dropped, report.devices, report.top[0]) == (1001, 3, ("a", 999))
    assert limiter.end_window().dropped == 0
    assert limiter.note_drop("a") is True  # a new window logs it again


def test_memory_stays_bounded_with_many_devices() -> None:
    limiter = DeviceRateLimiter(rate=1.0, burst=2, max_devices=1000)
    for n in range(50_000):
        limiter.allow(f"d{n}", n / 100_000)  # all within half a second: nobody refilled
        limiter.allow(f"d{n}", n / 100_000)
    assert len(limiter) <= 1000
    # A device forgotten under pressure just starts from a full bucket again.
    assert limiter.allow("d0", 1.0)


def test_reply_cache_returns_the_same_bytes_while_fresh_and_current() -> None:
    cache = ReplyCache(ttl=30.0, max_entries=3)
    cache.put("t/a", b"p1", (7, "k"), "t/offer", b"reply-1", now=0.0)
    hit = cache.get("t/a", b"p1", (7, "k"), now=10.0)
    assert hit is not None and (hit.topic, hit.payload) == ("t/offer", b"reply-1")
    assert cache.get("t/a", b"p2", (7, "k"), now=10.0) is None  # another payload
    assert cache.get("t/b", b"p1", (7, "k"), now=10.0) is None  # another device
    assert cache.get("t/a", b"p1", (8, "k"), now=10.0) is None  # the catalog moved
    cache.put("t/a", b"p1", (7, "k"), "t/offer", b"reply-1", now=0.0)
    assert cache.get("t/a", b"p1", (7, "k"), now=30.0) is None  # expired


def test_reply_cache_is_bounded() -> None:
    cache = ReplyCache(ttl=30.0, max_entries=3)
    for n in range(10):
        cache.put(f"t/{n}", b"p", 1, "o", b"r", now=float(n))
    assert len(cache) == 3
    assert cache.get("t/9", b"p", 1, now=9.0) is not None
    assert cache.get("t/0", b"p", 1, now=9.0) is None


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class AdvancingStop(threading.Event):
    """A stop event whose wait() moves the fake clock instead of sleeping."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock
        self.waited = 0.0

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None and timeout > 0
        self.clock.now += timeout
        self.waited += timeout
        return self.is_set()


@pytest.mark.parametrize("rate", [5.0, 500.0])
def test_pacer_lets_through_the_burst_then_rate_per_second(rate: float) -> None:
    clock = FakeClock()
    stop = AdvancingStop(clock)
    pacer = Pacer(rate, burst=rate / 10, clock=clock)
    taken = 0
    while clock.now < 10.0:
        assert pacer.take(stop)
        taken += 1
    assert taken <= pacer.burst + rate * 10.0 + 1
    assert taken >= rate * 10.0  # and it does not hold back more than it must


def test_pacer_returns_false_when_stopped_while_waiting() -> None:
    clock = FakeClock()
    stop = AdvancingStop(clock)
    pacer = Pacer(1.0, burst=1, clock=clock)
    assert pacer.take(stop)
    stop.set()
    assert pacer.take(stop) is False
