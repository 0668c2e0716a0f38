"""What every benchmark section shares: results, CPU meters, servers, the report.

A section is a module with ``run(ctx: BenchContext) -> list[Result]``. Each
:class:`Result` is one figure measured ``ctx.rounds`` times for the product and,
where there is one, for its ceiling (the same load against the best a plain
tool does on the same machine, measured in the same run). The report gives the
median of the rounds, their spread (min-max), the ratio of the medians and the
goal from issue 6.

Run from the repo root with the venv: ``.venv/bin/python -m bench.run``.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.support.mosquitto import MosquittoServer, start_mosquitto
from tests.support.ota_dirs import OtaDirs, ReleaseKeyPems

PREFIX = "ota/v1"


@dataclass
class Result:
    """One figure: per-round values for the product and its ceiling.

    ``higher_is_better`` says which way the ratio reads (throughput: product /
    ceiling; time or latency: ceiling / product is *not* used — we report
    product / ceiling and the goal says which side of it is good).
    """

    section: str
    name: str
    unit: str
    product: list[float]
    ceiling: list[float] = field(default_factory=list)
    higher_is_better: bool = True
    goal: str = ""
    #: the goal as a bound on product/ceiling: ``>= goal_ratio`` if higher is
    #: better, ``<= goal_ratio`` otherwise; None: no ratio goal (absolute or none)
    goal_ratio: float | None = None
    #: an absolute bound on the product's median (same direction as above)
    goal_absolute: float | None = None
    notes: str = ""
    #: CPU of each process involved, % of one core, one value per round
    cpu: dict[str, list[float]] = field(default_factory=dict)
    #: raw samples for the plots (e.g. latency in ms), by series name
    samples: dict[str, list[float]] = field(default_factory=dict)

    @property
    def product_median(self) -> float:
        return statistics.median(self.product) if self.product else float("nan")

    @property
    def ceiling_median(self) -> float | None:
        return statistics.median(self.ceiling) if self.ceiling else None

    @property
    def ratio(self) -> float | None:
        ceiling = self.ceiling_median
        if not ceiling or not self.product:
            return None
        return self.product_median / ceiling

    @property
    def met(self) -> bool | None:
        verdicts: list[bool] = []
        ratio = self.ratio
        if self.goal_ratio is not None and ratio is not None:
            verdicts.append(
                ratio >= self.goal_ratio if self.higher_is_better else ratio <= self.goal_ratio
            )
        if self.goal_absolute is not None and self.product:
            median = self.product_median
            verdicts.append(
                median >= self.goal_absolute
                if self.higher_is_better
                else median <= self.goal_absolute
            )
        return all(verdicts) if verdicts else None


def spread(values: Iterable[float]) -> str:
    """``median (min-max, n=k)`` in the figure's own unit, for the report."""
    items = sorted(values)
    if not items:
        return "-"
    median = statistics.median(items)
    if len(items) == 1:
        return fmt(median)
    return f"{fmt(median)} ({fmt(items[0])}-{fmt(items[-1])})"


def fmt(value: float) -> str:
    if value != value:  # NaN
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    items = sorted(values)
    rank = max(0, min(len(items) - 1, round(q / 100 * len(items) + 0.5) - 1))
    return items[rank]


class CpuMeter:
    """CPU time used by some processes (and their children) over a window.

    ``start()`` then ``stop()`` → {label: % of one core}. Processes that have
    exited by ``stop()`` count what they used up to their last sample.
    """

    def __init__(self) -> None:
        self._procs: dict[str, list[psutil.Process]] = {}
        self._first: dict[tuple[str, int], float] = {}
        self._last: dict[tuple[str, int], float] = {}
        self._t0 = 0.0

    def watch(self, label: str, pid: int) -> None:
        try:
            proc = psutil.Process(pid)
        except psutil.NoSuchProcess:
            return
        self._procs.setdefault(label, []).append(proc)
        if self._t0:
            self._sample(label, proc, first=True)

    def _sample(self, label: str, proc: psutil.Process, first: bool = False) -> None:
        try:
            times = proc.cpu_times()
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            return
        used = times.user + times.system
        key = (label, proc.pid)
        if first:
            self._first[key] = used
        self._last[key] = used

    def start(self) -> None:
        self._t0 = time.monotonic()
        for label, procs in self._procs.items():
            for proc in procs:
                self._sample(label, proc, first=True)

    def poll(self) -> None:
        """Sample now: call this before a watched process may exit."""
        for label, procs in self._procs.items():
            for proc in procs:
                self._sample(label, proc)

    def stop(self) -> dict[str, float]:
        self.poll()
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        out: dict[str, float] = {}
        for (label, pid), last in self._last.items():
            used = last - self._first.get((label, pid), last)
            out[label] = out.get(label, 0.0) + 100.0 * used / elapsed
        return out


def add_cpu(result_cpu: dict[str, list[float]], measured: dict[str, float]) -> None:
    for label, value in measured.items():
        result_cpu.setdefault(label, []).append(value)


@dataclass
class BenchContext:
    """One benchmark run: its folder, its rounds, and servers shared between sections."""

    workdir: Path
    rounds: int = 3
    quick: bool = False
    _keys: ReleaseKeyPems | None = None
    _counter: int = 0

    @classmethod
    def create(cls, rounds: int = 3, quick: bool = False) -> BenchContext:
        return cls(Path(tempfile.mkdtemp(prefix="ota-bench-")), rounds=rounds, quick=quick)

    def folder(self, name: str) -> Path:
        """A new, empty folder under the run's work folder."""
        self._counter += 1
        path = self.workdir / f"{self._counter:02d}-{name}"
        path.mkdir(parents=True)
        return path

    @property
    def release_keys(self) -> ReleaseKeyPems:
        """One RSA release key pair for the whole run (generation is the slow part)."""
        if self._keys is None:
            self._keys = ReleaseKeyPems.generate(self.folder("release-keys"))
        return self._keys

    def ota_dirs(self, name: str) -> OtaDirs:
        """Fresh keys/, packages/ and data/ folders with the run's release key."""
        return OtaDirs.create(self.folder(name), self.release_keys)

    @contextmanager
    def mosquitto(self, name: str = "mosquitto", extra: Iterable[str] = ()) -> Iterator[MosquittoServer]:
        """The repo's mosquitto.conf on a free port (test relaxation: anonymous, no ACL).

        The relaxation only drops authentication; limits, queues and
        ``set_tcp_nodelay`` are what ships. Both the product and its ceiling
        run against the same broker, so the ratio compares like with like.
        """
        server = start_mosquitto(self.folder(name), extra_options=list(extra))
        try:
            yield server
        finally:
            server.stop()


def machine_line() -> str:
    """Cores, CPU model, memory, OS, Python: the header of RESULTS.md."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = psutil.virtual_memory().total / 2**30
    return (
        f"{os.cpu_count()} cores ({model or platform.processor() or 'unknown CPU'}), "
        f"{memory_gib:.0f} GiB RAM, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )
