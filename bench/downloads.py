"""Downloads (issue 6, part 3): the built-in HTTP side vs nginx serving the same folder.

32 keep-alive clients (4 load processes x 8 connections, :mod:`bench.httpload`)
download a 1 MiB published package for 20 s (the measured window, after a warm-up):

* **full**: ``GET /packages/<file>`` → 200, whole file; from a real ``ota http``
  process (uvicorn, as shipped; ``OTA_HTTP_WORKERS`` = :data:`WORKERS`) and from nginx (Debian's ``/usr/sbin/nginx``,
  our own config: sendfile, keep-alive, no access log) serving the same
  packages folder. Goal: built-in ≥ 0.5 x nginx.
* **range**: the same clients ask random 256 KiB-aligned slices
  (``Range: bytes=a-b`` → 206, ``Content-Range`` checked), as resuming or
  chunked downloaders do. Goal: ≥ 0.5 x nginx.
* **OTA_PACKAGE_BASE_URL → nginx**: a second ``ota http`` configured with
  ``OTA_PACKAGE_BASE_URL`` = nginx; each client first asks it
  ``POST /check-update`` (the seed's device request) and downloads from the
  ``url`` of the offer. Ceiling: nginx's *full* figure of the same round.
  Goal: ~1.0.

Every response is checked (status, ``Content-Length``, ``Content-Range``); any
error fails the section. CPU: each load process, the ``ota http`` process, and
nginx (master + workers).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import requests

from bench.common import REPO_ROOT, BenchContext, CpuMeter, Result, add_cpu
from tests.e2e.processes import OtaProcess, ota_env, run_ota
from tests.support.ota_dirs import OtaDirs
from tests.support.ports import free_port, wait_for_port

SECTION = "downloads"
NGINX = "/usr/sbin/nginx"
SIZE = 1 << 20
RANGE_SIZE = 256 * 1024
FILENAME = "fw-bench-2.0.0.bin"
OLD_BUILD, NEW_BUILD = "bench-1", "bench-2"
LOAD_PROCESSES = 4
CONNECTIONS_PER_PROCESS = 8
MB = 1e6
#: OTA_HTTP_WORKERS of the measured `ota http` (on 2 cores, 2 workers measured lower: see README).
WORKERS = "1"


@dataclass
class LoadOutcome:
    mb_per_s: float
    requests_per_s: float
    cpu: dict[str, float]
    check_updates: int
    targets: list[str]


# -- servers -------------------------------------------------------------------


def _ota_http(dirs: OtaDirs, cwd: Path, extra: dict[str, str]) -> tuple[OtaProcess, str]:
    port = free_port()
    env = ota_env(
        {
            "OTA_HOST": "127.0.0.1",
            "OTA_HTTP_PORT": port,
            "OTA_KEYS_DIR": dirs.keys_dir,
            "OTA_PACKAGES_DIR": dirs.packages_dir,
            "OTA_DATA_DIR": dirs.data_dir,
            "OTA_ADMIN_PASSWORD": dirs.admin_password,
            "OTA_LOG_LEVEL": "WARNING",
            **extra,
        }
    )
    proc = OtaProcess(["http"], env, cwd)
    url = f"http://127.0.0.1:{port}"
    proc.wait_http(f"{url}/healthz")
    return proc, url


@contextmanager
def ota_http(dirs: OtaDirs, cwd: Path, **extra: str) -> Iterator[tuple[OtaProcess, str]]:
    proc, url = _ota_http(dirs, cwd, extra)
    try:
        yield proc, url
    finally:
        code = proc.stop()
        if code != 0 or "Traceback" in proc.output:
            print(f"ota http exited {code}:\n{proc.output[-3000:]}", flush=True)


NGINX_CONF = """\
{user}worker_processes {workers};
daemon off;
master_process on;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    default_type application/octet-stream;
    client_body_temp_path {folder}/tmp/body;
    proxy_temp_path {folder}/tmp/proxy;
    fastcgi_temp_path {folder}/tmp/fastcgi;
    uwsgi_temp_path {folder}/tmp/uwsgi;
    scgi_temp_path {folder}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port};
        location /packages/ {{
            alias {packages}/;
        }}
    }}
}}
"""


@contextmanager
def nginx(
    folder: Path, packages: Path, workers: str = "auto"
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """nginx in the foreground as our child, serving ``packages`` at ``/packages/``."""
    (folder / "tmp").mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = folder / "nginx.conf"
    # As root, nginx's workers would run as nobody, who cannot enter the 0700 bench folder.
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf.write_text(
        NGINX_CONF.format(user=user, workers=workers, folder=folder, port=port, packages=packages)
    )
    proc = subprocess.Popen(
        [NGINX, "-p", str(folder), "-c", str(conf), "-e", str(folder / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        try:
            wait_for_port(
                "127.0.0.1", port, timeout=10, alive=lambda: proc.poll() is None, what="nginx"
            )
        except RuntimeError as e:
            proc.kill()
            _, err = proc.communicate(timeout=5)
            raise RuntimeError(f"{e}: {err.decode(errors='replace')}") from e
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()  # SIGTERM: fast shutdown of master and workers
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _pids_with_children(pid: int) -> list[int]:
    try:
        parent = psutil.Process(pid)
        return [pid, *(child.pid for child in parent.children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


# -- the load ------------------------------------------------------------------


def load(
    spec: dict[str, Any], duration: float, warmup: float, servers: dict[str, int]
) -> LoadOutcome:
    """Run LOAD_PROCESSES load processes on ``spec``; CPU of them and of ``servers``."""
    start_at = time.time() + 1.0  # time to start the processes (and seed check-updates)
    procs: list[subprocess.Popen[str]] = []
    for k in range(LOAD_PROCESSES):
        one = {
            **spec,
            "tag": f"{spec.get('tag', 'x')}{k}",
            "connections": CONNECTIONS_PER_PROCESS,
            "start_at": start_at,
            "warmup": warmup,
            "duration": duration,
            "size": SIZE,
            "range_size": RANGE_SIZE,
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "bench.httpload", "--json", json.dumps(one)],
                cwd=REPO_ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    meter = CpuMeter()
    for k, proc in enumerate(procs):
        meter.watch(f"load process {k + 1}", proc.pid)
    for label, pid in servers.items():
        for one_pid in _pids_with_children(pid):
            meter.watch(label, one_pid)
    time.sleep(max(0.0, start_at + warmup - time.time()))
    meter.start()
    time.sleep(duration)
    cpu = meter.stop()
    totals = {"bytes": 0, "responses": 0, "check_updates": 0}
    seconds: list[float] = []
    targets: set[str] = set()
    for proc in procs:
        out, err = proc.communicate(timeout=duration + 60)
        if proc.returncode != 0:
            raise RuntimeError(f"load process failed ({proc.returncode}):\n{err[-3000:]}")
        result = json.loads(out.strip().splitlines()[-1])
        if result["error_count"]:
            raise RuntimeError(f"{result['error_count']} bad responses, e.g. {result['errors']}")
        for key in totals:
            totals[key] += result[key]
        seconds.append(result["seconds"])
        targets.update(result["targets"])
    window = sum(seconds) / len(seconds)
    return LoadOutcome(
        totals["bytes"] / window / MB,
        totals["responses"] / window,
        cpu,
        totals["check_updates"],
        sorted(targets),
    )


# -- set-up --------------------------------------------------------------------


def _publish(
    http: str, password: str, build_id: str, version: str, filename: str, data: bytes
) -> None:
    response = requests.post(
        f"{http}/admin/api/releases",
        auth=("admin", password),
        data={"build_id": build_id, "version": version},
        files={"file": (filename, data, "application/octet-stream")},
        timeout=60,
    )
    if response.status_code not in (200, 201):
        raise RuntimeError(f"publishing {build_id} failed: {response.status_code} {response.text}")


def _seed_offer_url(http: str) -> str:
    response = requests.post(
        f"{http}/check-update",
        json={"device_id": "bench-probe", "build_id": OLD_BUILD},
        timeout=10,
    )
    response.raise_for_status()
    offer = response.json()
    if offer.get("status") != "update-available":
        raise RuntimeError(f"no offer for {OLD_BUILD}: {offer}")
    return str(offer["url"])


def _wait_offer_url(http: str, prefix: str, timeout: float = 15) -> str:
    """The product's offer URL once its catalog has the release (it polls the database)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            url = _seed_offer_url(http)
            if url.startswith(prefix):
                return url
        except (requests.RequestException, RuntimeError):
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise RuntimeError(f"offer URL never started with {prefix}")
        time.sleep(0.2)


def run(ctx: BenchContext) -> list[Result]:
    duration = 2.0 if ctx.quick else 20.0
    short = 2.0 if ctx.quick else 4.0
    warmup = 0.5
    dirs = ctx.ota_dirs("downloads")
    cwd = dirs.root
    keygen = run_ota(["keygen"], ota_env({"OTA_KEYS_DIR": dirs.keys_dir}), cwd)
    if keygen.returncode != 0:
        raise RuntimeError(f"ota keygen failed: {keygen.stderr}")

    full_mb = Result(
        SECTION,
        "full 1 MiB downloads, built-in vs nginx",
        "MB/s",
        [],
        goal=">= 0.5 x nginx",
        goal_ratio=0.5,
    )
    full_rps = Result(
        SECTION,
        "full 1 MiB downloads, built-in vs nginx",
        "requests/s",
        [],
        goal=">= 0.5 x nginx",
        goal_ratio=0.5,
    )
    range_mb = Result(
        SECTION,
        "Range 256 KiB slices, built-in vs nginx",
        "MB/s",
        [],
        goal=">= 0.5 x nginx",
        goal_ratio=0.5,
    )
    range_rps = Result(
        SECTION,
        "Range 256 KiB slices, built-in vs nginx",
        "requests/s",
        [],
        goal=">= 0.5 x nginx",
        goal_ratio=0.5,
    )
    base_mb = Result(
        SECTION,
        "check-update then download via OTA_PACKAGE_BASE_URL=nginx",
        "MB/s",
        [],
        goal="~1.0 x nginx (full)",
        goal_ratio=0.9,
    )
    base_rps = Result(
        SECTION,
        "check-update then download via OTA_PACKAGE_BASE_URL=nginx",
        "requests/s",
        [],
        goal="~1.0 x nginx (full)",
        goal_ratio=0.9,
    )

    with ExitStack() as stack:
        product, http = stack.enter_context(ota_http(dirs, cwd, OTA_HTTP_WORKERS=WORKERS))
        _publish(
            http, dirs.admin_password, OLD_BUILD, "1.0.0", "fw-bench-1.0.0.bin", os.urandom(4096)
        )
        _publish(http, dirs.admin_password, NEW_BUILD, "2.0.0", FILENAME, os.urandom(SIZE))
        ngx, ngx_url = stack.enter_context(
            nginx(ctx.folder("downloads-nginx"), dirs.packages_dir.resolve())
        )
        fronted, fronted_http = stack.enter_context(
            ota_http(dirs, cwd, OTA_PACKAGE_BASE_URL=ngx_url)
        )
        product_url = _wait_offer_url(http, "/packages/")
        product_url = http + product_url
        nginx_file = f"{ngx_url}/packages/{FILENAME}"
        _wait_offer_url(fronted_http, ngx_url)
        ota_pid = {"ota http": product.proc.pid}
        ngx_pid = {"nginx": ngx.pid}

        for round_no in range(ctx.rounds):
            print(f"  round {round_no + 1}/{ctx.rounds}", flush=True)
            ours = load({"mode": "full", "url": product_url}, duration, warmup, ota_pid)
            theirs = load({"mode": "full", "url": nginx_file}, duration, warmup, ngx_pid)
            for result, ours_v, theirs_v in (
                (full_mb, ours.mb_per_s, theirs.mb_per_s),
                (full_rps, ours.requests_per_s, theirs.requests_per_s),
            ):
                result.product.append(ours_v)
                result.ceiling.append(theirs_v)
            add_cpu(full_mb.cpu, {f"built-in: {k}": v for k, v in ours.cpu.items()})
            add_cpu(full_mb.cpu, {f"nginx run: {k}": v for k, v in theirs.cpu.items()})

            ours_r = load({"mode": "range", "url": product_url}, short, warmup, ota_pid)
            theirs_r = load({"mode": "range", "url": nginx_file}, short, warmup, ngx_pid)
            range_mb.product.append(ours_r.mb_per_s)
            range_mb.ceiling.append(theirs_r.mb_per_s)
            range_rps.product.append(ours_r.requests_per_s)
            range_rps.ceiling.append(theirs_r.requests_per_s)
            add_cpu(range_mb.cpu, {f"built-in: {k}": v for k, v in ours_r.cpu.items()})
            add_cpu(range_mb.cpu, {f"nginx run: {k}": v for k, v in theirs_r.cpu.items()})

            seeded = load(
                {
                    "mode": "seed",
                    "check_update": f"{fronted_http}/check-update",
                    "build_id": OLD_BUILD,
                    "tag": f"r{round_no}-",
                },
                short,
                warmup,
                {"ota http (base URL)": fronted.proc.pid, "nginx": ngx.pid},
            )
            if seeded.targets != [f"{nginx_file.removeprefix('http://')}"]:
                raise RuntimeError(f"offers pointed elsewhere than nginx: {seeded.targets}")
            base_mb.product.append(seeded.mb_per_s)
            base_mb.ceiling.append(theirs.mb_per_s)
            base_rps.product.append(seeded.requests_per_s)
            base_rps.ceiling.append(theirs.requests_per_s)
            add_cpu(base_mb.cpu, seeded.cpu)

    windows = (
        f"{duration:g} s"
        if duration == short
        else f"{duration:g} s (full), {short:g} s (range, base URL)"
    )
    load_line = (
        f"{LOAD_PROCESSES} load processes x {CONNECTIONS_PER_PROCESS} keep-alive connections "
        f"(bench/httpload.py), measured window {windows} after {warmup:g} s warm-up; "
        f"MB = 10^6 bytes of body; every status, Content-Length and Content-Range checked"
    )
    full_mb.notes = (
        f"{load_line}. Built-in: `ota http` (uvicorn, download fast path, "
        f"OTA_HTTP_WORKERS={WORKERS}). Ceiling: nginx "
        f"{_nginx_version()} (worker_processes auto, sendfile, keep-alive, no access log) "
        "on the same packages folder."
    )
    range_mb.notes = (
        f"Each request asks a random {RANGE_SIZE // 1024} KiB-aligned slice of the 1 MiB file "
        "(`Range: bytes=a-b` → 206); same clients, servers and checks as the full downloads."
    )
    base_mb.notes = (
        "A second `ota http` with OTA_PACKAGE_BASE_URL=<nginx>: each of the 32 clients asks it "
        "POST /check-update once (seed body: device_id, build_id), then downloads the offer's "
        "`url` (nginx) over keep-alive. Ceiling: nginx's full-download figure of the same round."
    )
    return [full_mb, full_rps, range_mb, range_rps, base_mb, base_rps]


def _nginx_version() -> str:
    try:
        out = subprocess.run([NGINX, "-v"], capture_output=True, text=True, timeout=10)
        return out.stderr.strip().split("/")[-1]
    except (OSError, subprocess.SubprocessError):
        return "?"
