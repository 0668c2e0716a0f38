"""Issue 6, part 5: bridge memory and start-up with 100,000 devices and 1,000 releases.

For SQLite and for PostgreSQL (a throwaway cluster from tests/support/postgres.py):

1. **Populate** once per backend, through the product's own write paths:
   1,000 releases with :meth:`ReleaseService.add_existing` (hash, RSA-sign,
   store: exactly what ``ota release add`` does), and 100,000 devices with
   :meth:`DeviceRegistry.apply` — the bridge's write-behind path — in batches
   of 5,000 :class:`AnnouncementSeen` / :class:`StatusSeen` events, so the
   devices, install and history rows are the ones real traffic leaves.
   The fleet: 20 (hardware, channel) pairs, releases ``1.<j>.0`` in one
   timeline; 90% of devices run the newest release of their pair, 10% the one
   before and were offered the newest (half of those report ``downloading``).
   ``last_seen`` spreads over the last week.
2. **Start-up**, each round: exec a real ``ota bridge`` against Mosquitto with a
   fresh client id; a probe device announces an old build every 20 ms from
   before the exec. Start-up = exec → the probe's first offer (the bridge is
   connected, subscribed, has its catalog and answers). RSS is read when the
   offer arrives; the bridge's start-up push pass (it re-plans pushes over
   every known device when it starts) is followed to its ``push done`` log
   line; peak RSS (VmHWM) and CPU cover the first ``WINDOW`` seconds.
   Ceiling, same round, same probe: ``bench/footprint_responder.py``, a
   do-nothing paho-mqtt responder (python start-up + connect + subscribe).
3. **Admin device list** at 100,000 devices: the admin's filtered, paged query
   (:func:`admin.fleet.find_devices`, one page + count) for each filter the
   page offers, without and with the indexes of migration 0003.
"""

from __future__ import annotations

import functools
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion

from bench.common import PREFIX, BenchContext, CpuMeter, Result
from ota_core.keyfiles import load_signer
from ota_core.models import Announcement, StatusReport
from ota_core.package_files import PackageFolder
from ota_core.releases import ReleaseRequest, ReleaseService
from ota_core.store import DeviceRegistry, ReleaseStore, open_database
from ota_core.store.devices import AnnouncementSeen, StatusSeen
from tests.support.mosquitto import MosquittoServer
from tests.support.ota_dirs import OtaDirs

SECTION = "footprint"
OTA = str(Path(sys.executable).with_name("ota"))
RESPONDER = Path(__file__).with_name("footprint_responder.py")
PAIRS = 20  # (hardware, channel) pairs: board-0..9 x stable/beta
BATCH = 5_000
PROBE = "probe-footprint"
#: Seconds after exec that peak RSS and CPU cover.
WINDOW = 10.0
MB = 1024 * 1024
RSS_GOAL_MB = 150.0
STARTUP_GOAL_S = 2.0
FACETS = "filter form facets"


def _pair(index: int) -> tuple[str, str]:
    pair = index % PAIRS
    return f"board-{pair % 10}", "stable" if pair < 10 else "beta"


@dataclass
class Fleet:
    devices: int
    releases: int
    release_seconds: float = 0.0
    device_seconds: float = 0.0

    def release(self, j: int) -> tuple[str, str, str, str, str]:
        """(build_id, version, filename, hardware, channel) of release ``j``."""
        hardware, channel = _pair(j)
        return f"b{j:05d}", f"1.{j}.0", f"fw-{j:05d}.bin", hardware, channel

    def newest(self, pair: int) -> int:
        """Index of the newest release of a (hardware, channel) pair."""
        return self.releases - PAIRS + pair

    def probe_announcement(self) -> bytes:
        build, version, _, hardware, channel = self.release(self.newest(0) - PAIRS)
        return (
            f'{{"build_id":"{build}","version":"{version}","hardware":"{hardware}",'
            f'"channel":"{channel}","request_id":"r1"}}'
        ).encode()


def populate(dirs: OtaDirs, url: str, devices: int, releases: int) -> Fleet:
    """Releases through ReleaseService.add_existing, devices through DeviceRegistry.apply."""
    fleet = Fleet(devices, releases)
    database = open_database(url)
    try:
        t0 = time.perf_counter()
        packages = PackageFolder(dirs.packages_dir)
        service = ReleaseService(ReleaseStore(database), packages, load_signer(dirs.keys_dir))
        for j in range(releases):
            build, version, filename, hardware, channel = fleet.release(j)
            (dirs.packages_dir / filename).write_bytes(f"firmware {build}\n".encode() * 64)
            service.add_existing(
                ReleaseRequest(build, version, filename, hardware=hardware, channel=channel)
            )
        fleet.release_seconds = time.perf_counter() - t0

        t0 = time.perf_counter()
        registry = DeviceRegistry(database)
        announcements: dict[tuple[int, bool], Announcement] = {}
        for pair in range(PAIRS):
            for old in (False, True):
                j = fleet.newest(pair) - (PAIRS if old else 0)
                build, version, _, hardware, channel = fleet.release(j)
                announcements[(pair, old)] = Announcement.model_validate(
                    {
                        "build_id": build,
                        "version": version,
                        "hardware": hardware,
                        "channel": channel,
                    }
                )
        now = datetime.now(UTC)
        week = 7 * 24 * 3600
        events: list[AnnouncementSeen | StatusSeen] = []
        for i in range(devices):
            pair = i % PAIRS
            old = i % 10 == 0
            at = now - timedelta(seconds=week * (devices - i) / devices)
            newest_build = fleet.release(fleet.newest(pair))[0]
            device_id = f"dev-{i:06d}"
            events.append(
                AnnouncementSeen(
                    device_id, announcements[(pair, old)], newest_build if old else None, at
                )
            )
            if old and i % 20 == 0:
                report = StatusReport.model_validate(
                    {"state": "downloading", "build_id": newest_build}, strict=False
                )
                events.append(StatusSeen(device_id, report, at + timedelta(seconds=1)))
            if len(events) >= BATCH:
                registry.apply(events)
                events = []
        registry.apply(events)
        fleet.device_seconds = time.perf_counter() - t0
    finally:
        database.dispose()
    return fleet


# -- one process under test ------------------------------------------------------


class Probe:
    """A device that announces an old build every 20 ms and notes when its first offer lands."""

    def __init__(self, port: int, payload: bytes) -> None:
        self._payload = payload
        self.offered = threading.Event()
        self.offered_at = 0.0
        self.offer_size = 0
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex[:8]}"
        )
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        self._client.subscribe(f"{PREFIX}/devices/{PROBE}/offer", qos=1)
        self._client.loop_start()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._announce, daemon=True)

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        if not self.offered.is_set():
            self.offered_at = time.perf_counter()
            self.offer_size = len(message.payload)
            self.offered.set()

    def _announce(self) -> None:
        topic = f"{PREFIX}/devices/{PROBE}/announce"
        while not self._stop.is_set() and not self.offered.is_set():
            self._client.publish(topic, self._payload, qos=0)
            self._stop.wait(0.02)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._client.disconnect()
        self._client.loop_stop()


@dataclass
class Run:
    """What one exec of a process gave."""

    startup: float = float("nan")  # s, exec -> first offer at the probe
    rss_ready: float = float("nan")  # MB, when the first offer arrived
    peak_rss: float = float("nan")  # MB, VmHWM over the window
    rss_end: float = float("nan")  # MB, at the end of the window
    peak_rss_sum: float = float("nan")  # MB, peak of the RSS sum over the process tree
    push_done: float = float("nan")  # s, exec -> "push done" logged
    cpu: dict[str, float] = field(default_factory=dict)
    offer_size: int = 0


def _tree(proc: psutil.Process) -> list[psutil.Process]:
    """The process and its children: the bridge's registry writer is a child process."""
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return [proc]


def _rss_mb(proc: psutil.Process) -> float:
    """RSS summed over the process tree (pages shared between them counted in each)."""
    total = 0
    for member in _tree(proc):
        with suppress(psutil.NoSuchProcess):
            total += member.memory_info().rss
    return float(total) / MB


def _pss_mb(proc: psutil.Process) -> float:
    """PSS summed over the process tree: each shared page split between its sharers, so
    the sum is what the tree costs (RSS would count libpython twice for two processes)."""
    total = 0
    for member in _tree(proc):
        with suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += member.memory_full_info().pss
    return float(total) / MB


def _postgres_pids(postmaster: int | None) -> list[int]:
    if postmaster is None:
        return []
    try:
        proc = psutil.Process(postmaster)
        return [proc.pid, *(c.pid for c in proc.children())]
    except psutil.NoSuchProcess:
        return []


def measure(
    command: list[str],
    env: dict[str, str],
    cwd: Path,
    mosquitto: MosquittoServer,
    probe_payload: bytes,
    *,
    window: float,
    wait_for: str | None,
    postmaster: int | None = None,
) -> Run:
    """Exec ``command``, time it to the probe's first offer, follow RSS and CPU over ``window``."""
    run = Run()
    probe = Probe(mosquitto.port, probe_payload)
    lines: list[tuple[float, str]] = []
    meter = CpuMeter()
    if mosquitto.pid is not None:
        meter.watch("mosquitto", mosquitto.pid)
    for pid in _postgres_pids(postmaster):
        meter.watch("postgresql", pid)
    probe.start()
    time.sleep(0.1)  # the probe is announcing before the exec
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((time.perf_counter(), line.rstrip("\n")))

    threading.Thread(target=pump, daemon=True).start()
    ps = psutil.Process(proc.pid)
    label = "bridge" if wait_for else "paho responder"
    meter.watch(label, proc.pid)
    meter.start()
    watched_pg = set(_postgres_pids(postmaster))
    watched_children: set[int] = set()
    peak = peak_rss = 0.0
    try:
        if not probe.offered.wait(30):
            raise RuntimeError(f"{command[:2]} sent no offer in 30 s:\n" + _tail(lines))
        run.startup = probe.offered_at - t0
        run.rss_ready = _pss_mb(ps)
        run.offer_size = probe.offer_size
        deadline = t0 + window
        while time.perf_counter() < deadline:
            # New PostgreSQL backends (the bridge's connections) count from their start.
            for pid in _postgres_pids(postmaster):
                if pid not in watched_pg:
                    watched_pg.add(pid)
                    meter.watch("postgresql", pid)
            for child in _tree(ps)[1:]:
                if child.pid not in watched_children:
                    watched_children.add(child.pid)
                    meter.watch(f"{label}: registry writer", child.pid)
            peak = max(peak, _pss_mb(ps))
            peak_rss = max(peak_rss, _rss_mb(ps))
            if wait_for and run.push_done != run.push_done:
                for at, line in list(lines):
                    if wait_for in line:
                        run.push_done = at - t0
            if proc.poll() is not None:
                raise RuntimeError(f"{command[:2]} exited {proc.returncode}:\n" + _tail(lines))
            time.sleep(0.05)
        run.rss_end = _pss_mb(ps)
        run.peak_rss = max(peak, run.rss_end)  # sampled every 50 ms
        run.peak_rss_sum = max(peak_rss, _rss_mb(ps))
        run.cpu = meter.stop()
        if wait_for and run.push_done != run.push_done:
            raise RuntimeError(f"no {wait_for!r} in {window} s:\n" + _tail(lines))
    finally:
        probe.close()
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return run


def _tail(lines: list[tuple[float, str]]) -> str:
    return "\n".join(line for _, line in lines[-30:])


# -- admin device list ---------------------------------------------------------------


def admin_queries(url: str, fleet: Fleet) -> dict[str, Callable[[], Any]]:
    import http_files  # noqa: F401  (admin and http_files import each other; the app's order)
    from admin.fleet import DeviceFilter, facet_values, find_devices

    database = open_database(url, run_migrations=False)
    week_ago = datetime.now(UTC) - timedelta(days=1)
    newest = fleet.release(fleet.newest(3))
    filters = {
        "no filter": DeviceFilter(),
        "status=downloading": DeviceFilter(status="downloading"),
        "status=none": DeviceFilter(status="none"),
        "channel=beta": DeviceFilter(channel="beta"),
        "hardware=board-3": DeviceFilter(hardware="board-3"),
        "version (newest of a pair)": DeviceFilter(version=newest[1]),
        "seen in the last day": DeviceFilter(seen_after=week_ago),
        "hardware+channel+status": DeviceFilter(
            hardware="board-3", channel="stable", status="downloading"
        ),
        "page 50 of channel=stable": DeviceFilter(channel="stable", offset=5_000),
    }
    queries: dict[str, Callable[[], Any]] = {
        name: functools.partial(find_devices, database, f) for name, f in filters.items()
    }
    queries[FACETS] = functools.partial(facet_values, database)
    return queries


def time_admin(url: str, fleet: Fleet, repeats: int) -> dict[str, float]:
    """Median ms of each admin query (one page + its count)."""
    out: dict[str, float] = {}
    for name, query in admin_queries(url, fleet).items():
        query()  # warm the cache: every figure is a warm one
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            query()
            times.append(1000 * (time.perf_counter() - t))
        out[name] = statistics.median(times)
    return out


def time_registry(url: str, fleet: Fleet, events: int) -> float:
    """µs per event of the bridge's write-behind path: known devices announcing again."""
    database = open_database(url, run_migrations=False)
    try:
        registry = DeviceRegistry(database)
        now = datetime.now(UTC)
        batch: list[AnnouncementSeen] = []
        build, version, _, hardware, channel = fleet.release(fleet.newest(0))
        announcement = Announcement.model_validate(
            {"build_id": build, "version": version, "hardware": hardware, "channel": channel}
        )
        step = max(1, fleet.devices // events)
        ids = [f"dev-{i:06d}" for i in range(0, fleet.devices, step)][:events]
        t = time.perf_counter()
        for device_id in ids:
            batch.append(AnnouncementSeen(device_id, announcement, None, now))
            if len(batch) == 500:  # the write-behind writer's batch size under load
                registry.apply(batch)
                batch = []
        registry.apply(batch)
        return 1e6 * (time.perf_counter() - t) / len(ids)
    finally:
        database.dispose()


def set_indexes(url: str, present: bool) -> None:
    """Migrate to head (with 0003's indexes) or back to 0002 (without)."""
    from alembic import command
    from alembic.config import Config

    from ota_core.store.database import MIGRATIONS

    database = open_database(url, run_migrations=False)
    try:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with database.engine.begin() as connection:
            config.attributes["connection"] = connection
            if present:
                command.upgrade(config, "head")
            else:
                command.downgrade(config, "0002")
        if database.engine.dialect.name == "postgresql":
            with database.engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("ANALYZE")
        else:
            with database.engine.begin() as conn:
                conn.exec_driver_sql("ANALYZE")
    finally:
        database.dispose()


# -- the section -------------------------------------------------------------------


@contextmanager
def _backends(ctx: BenchContext) -> Iterator[list[tuple[str, str, OtaDirs, int | None]]]:
    """(name, database URL, folders, postmaster pid) for SQLite and PostgreSQL."""
    from tests.support.postgres import start_postgres

    sqlite_dirs = ctx.ota_dirs("footprint-sqlite")
    pg_dirs = ctx.ota_dirs("footprint-postgresql")
    server = start_postgres()
    try:
        pid_file = server.data_dir / "postmaster.pid"
        postmaster = int(pid_file.read_text().split()[0])
        yield [
            ("sqlite", f"sqlite:///{sqlite_dirs.data_dir / 'ota.sqlite3'}", sqlite_dirs, None),
            ("postgresql", server.new_database(), pg_dirs, postmaster),
        ]
    finally:
        server.stop()


def run(ctx: BenchContext) -> list[Result]:
    devices, releases = (2_000, 60) if ctx.quick else (100_000, 1_000)
    window = 4.0 if ctx.quick else WINDOW
    results: list[Result] = []
    with ctx.mosquitto("footprint-mosquitto") as mosquitto, _backends(ctx) as backends:
        for backend, url, dirs, postmaster in backends:
            fleet = populate(dirs, url, devices, releases)
            print(
                f"  {backend}: {releases:,} releases in {fleet.release_seconds:.1f} s, "
                f"{devices:,} devices in {fleet.device_seconds:.1f} s",
                flush=True,
            )
            results += _startup(ctx, backend, url, dirs, postmaster, mosquitto, fleet, window)
            results += _admin(ctx, backend, url, fleet)
    return results


def _startup(
    ctx: BenchContext,
    backend: str,
    url: str,
    dirs: OtaDirs,
    postmaster: int | None,
    mosquitto: MosquittoServer,
    fleet: Fleet,
    window: float,
) -> list[Result]:
    probe_payload = fleet.probe_announcement()
    bridges: list[Run] = []
    ceilings: list[Run] = []
    offer_size = 1024
    for round_no in range(ctx.rounds):
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTA_")}
        env.update(
            OTA_DATABASE_URL=url,
            OTA_BROKER_URL=mosquitto.url,
            OTA_KEYS_DIR=str(dirs.keys_dir),
            OTA_PACKAGES_DIR=str(dirs.packages_dir),
            OTA_DATA_DIR=str(dirs.data_dir),
            OTA_MQTT_CLIENT_ID=f"footprint-{backend}-{round_no}-{uuid.uuid4().hex[:6]}",
            OTA_LOG_LEVEL="INFO",
        )
        bridge = measure(
            [OTA, "bridge"],
            env,
            dirs.root,
            mosquitto,
            probe_payload,
            window=window,
            wait_for="push done",
            postmaster=postmaster,
        )
        offer_size = bridge.offer_size or offer_size
        bridges.append(bridge)
        ceilings.append(
            measure(
                [sys.executable, str(RESPONDER), str(mosquitto.port), "5", PREFIX, str(offer_size)],
                env,
                dirs.root,
                mosquitto,
                probe_payload,
                window=min(window, 3.0),
                wait_for=None,
            )
        )
    scale = f"{fleet.devices:,} devices, {fleet.releases:,} releases, {backend}"
    cpu: dict[str, list[float]] = {}
    for r in bridges:
        for label, value in r.cpu.items():
            cpu.setdefault(f"{label} (bridge rounds, first {window:.0f} s)", []).append(value)
    for r in ceilings:
        for label, value in r.cpu.items():
            if label != "postgresql":
                cpu.setdefault(f"{label} (responder rounds)", []).append(value)
    startup = Result(
        SECTION,
        f"start-up, exec to first offer ({backend})",
        "s",
        [r.startup for r in bridges],
        [r.startup for r in ceilings],
        higher_is_better=False,
        goal="≤ 2 s",
        goal_absolute=STARTUP_GOAL_S,
        notes=(
            f"{scale}. A probe device announces every 20 ms from before the exec; the "
            "ceiling is a do-nothing paho-mqtt responder process (python start-up + connect "
            "+ subscribe). Populated through ReleaseService.add_existing "
            f"({fleet.release_seconds:.1f} s) and DeviceRegistry.apply in batches of "
            f"{BATCH:,} ({fleet.device_seconds:.1f} s)."
        ),
        cpu=cpu,
    )
    rss = Result(
        SECTION,
        f"memory (PSS) when answering, bridge + registry writer ({backend})",
        "MB",
        [r.rss_ready for r in bridges],
        [r.rss_ready for r in ceilings],
        higher_is_better=False,
        goal="≤ 150 MB",
        goal_absolute=RSS_GOAL_MB,
    )
    peak = Result(
        SECTION,
        f"peak memory (PSS), bridge + registry writer, first {window:.0f} s ({backend})",
        "MB",
        [r.peak_rss for r in bridges],
        [r.peak_rss for r in ceilings],
        higher_is_better=False,
        goal="≤ 150 MB",
        goal_absolute=RSS_GOAL_MB,
        notes="PSS summed over the bridge and its registry writer process, sampled every "
        "50 ms (covers the start-up push pass); the plain RSS sum, which counts pages the "
        f"two share twice, peaked at {statistics.median(r.peak_rss_sum for r in bridges):.0f} "
        f"MB. At the end of the window: bridge {statistics.median(r.rss_end for r in bridges):.0f}"
        f" MB, responder {statistics.median(r.rss_end for r in ceilings):.0f} MB (PSS).",
    )
    push = Result(
        SECTION,
        f"start-up push pass over {fleet.devices:,} devices done ({backend})",
        "s",
        [r.push_done for r in bridges],
        higher_is_better=False,
        notes="exec to the bridge's `push done` log line: every known device's offer "
        f"re-decided, {fleet.devices // 10:,} found already offered, none pushed.",
    )
    return [startup, rss, peak, push]


def _admin(ctx: BenchContext, backend: str, url: str, fleet: Fleet) -> list[Result]:
    repeats = 3 if ctx.quick else 7
    writes = 2_000 if ctx.quick else 10_000
    set_indexes(url, present=False)
    before = time_admin(url, fleet, repeats)
    write_before = [time_registry(url, fleet, writes) for _ in range(3)]
    set_indexes(url, present=True)
    after = time_admin(url, fleet, repeats)
    write_after = [time_registry(url, fleet, writes) for _ in range(3)]
    pages = [name for name in before if name != FACETS]
    detail = "; ".join(f"{name} {before[name]:.1f} → {after[name]:.1f}" for name in before)
    return [
        Result(
            SECTION,
            f"admin device list, median of {len(pages)} filters, before 0003 ({backend})",
            "ms",
            [statistics.median(before[n] for n in pages)],
            higher_is_better=False,
        ),
        Result(
            SECTION,
            f"admin device list, median of {len(pages)} filters, with 0003 ({backend})",
            "ms",
            [statistics.median(after[n] for n in pages)],
            higher_is_better=False,
            notes=(
                f"{fleet.devices:,} devices; find_devices = page of 100 + count, warm, median "
                f"of {repeats}; ms without → with the 0003 indexes: {detail}. Slowest page "
                f"{max(before[n] for n in pages):.1f} → {max(after[n] for n in pages):.1f} ms."
            ),
            samples={
                "before (0002)": [before[n] for n in pages],
                "with 0003": [after[n] for n in pages],
            },
        ),
        Result(
            SECTION,
            f"registry write cost, known device announcing, with 0003 ({backend})",
            "µs/event",
            write_after,
            higher_is_better=False,
            notes=(
                f"DeviceRegistry.apply, batches of 500, {writes:,} re-announcements spread "
                f"over the fleet, 3 runs: {statistics.median(write_before):.0f} "
                f"({min(write_before):.0f}-{max(write_before):.0f}) µs/event without the "
                f"indexes, {statistics.median(write_after):.0f} "
                f"({min(write_after):.0f}-{max(write_after):.0f}) with."
            ),
        ),
    ]
