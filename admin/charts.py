"""The rollout progress chart as plain geometry for an inline SVG (pure, no I/O).

The template draws what :func:`progress_chart` computes: two step lines
(installed and failed so far, over time) and a dashed marker for every entry of
the rollout's log (start, each stage, pause, resume, abort). No script, no
fetch: it is part of the page, so the strict CSP stays as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

WIDTH = 640
HEIGHT = 220
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 22, 30


@dataclass(frozen=True)
class Marker:
    x: float
    label: str
    kind: str  # active | paused | aborted | completed


@dataclass(frozen=True)
class Tick:
    pos: float
    label: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    left: float
    right: float
    top: float
    bottom: float
    installed: str  # SVG polyline points
    failed: str
    y_ticks: tuple[Tick, ...]
    x_ticks: tuple[Tick, ...]
    markers: tuple[Marker, ...]
    total_installed: int
    total_failed: int

    @property
    def empty(self) -> bool:
        return self.total_installed == 0 and self.total_failed == 0


def _clock(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%H:%M:%S")


def _marker_label(entry: dict[str, Any]) -> str:
    state = entry["state"]
    return f"{entry['percent']:g}%" if state == "active" else str(state)


def _nice_max(value: int) -> int:
    """A round axis maximum at or above ``value`` (1, 2, 5, 10, 20, 50, …)."""
    value = max(value, 1)
    scale = 1
    while True:
        for step in (1, 2, 5):
            if step * scale >= value:
                return step * scale
        scale *= 10


def progress_chart(
    series: Sequence[tuple[float, int, int]],
    log: Sequence[dict[str, Any]],
    start: float,
    end: float,
) -> Chart:
    """Geometry for ``series`` ((time, installed so far, failed so far), in time order)
    and the log entries, on a time axis from ``start`` to ``end`` (epoch seconds)."""
    end = max(end, start + 1.0, *(t for t, _, _ in series[-1:]))
    left, right = float(LEFT), float(WIDTH - RIGHT)
    top, bottom = float(TOP), float(HEIGHT - BOTTOM)
    last_installed = series[-1][1] if series else 0
    last_failed = series[-1][2] if series else 0
    y_max = _nice_max(max(last_installed, last_failed))

    def x(t: float) -> float:
        return round(left + (right - left) * (t - start) / (end - start), 1)

    def y(n: int) -> float:
        return round(bottom - (bottom - top) * n / y_max, 1)

    def steps(index: int) -> str:
        points = [(x(start), y(0))]
        previous = 0
        for point in series:
            value = int(point[index])
            if value != previous:
                at = x(max(point[0], start))
                points += [(at, y(previous)), (at, y(value))]
                previous = value
        points.append((x(end), y(previous)))
        return " ".join(f"{px:g},{py:g}" for px, py in points)

    y_ticks = tuple(Tick(y(v), str(v)) for v in sorted({0, y_max // 2, y_max}))
    x_ticks = (
        Tick(left, _clock(start)),
        Tick((left + right) / 2, _clock((start + end) / 2)),
        Tick(right, _clock(end)),
    )
    markers = tuple(
        Marker(x(min(max(e["at"], start), end)), _marker_label(e), str(e["state"])) for e in log
    )
    return Chart(
        width=WIDTH,
        height=HEIGHT,
        left=left,
        right=right,
        top=top,
        bottom=bottom,
        installed=steps(1),
        failed=steps(2),
        y_ticks=y_ticks,
        x_ticks=x_ticks,
        markers=markers,
        total_installed=last_installed,
        total_failed=last_failed,
    )
