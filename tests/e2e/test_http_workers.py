"""``ota http`` with OTA_HTTP_WORKERS=2: two worker processes share the port and stop cleanly."""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import requests

from tests.e2e.processes import OtaProcess, ota_env, run_ota
from tests.support.ports import free_port


def _serving_workers(parent: int, port: int) -> set[int]:
    """Worker pids holding an established connection on ``port``."""
    found = set()
    for child in psutil.Process(parent).children():
        for conn in child.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_ESTABLISHED:
                found.add(child.pid)
    return found


def test_two_workers_share_the_port_and_stop_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = ota_env(
        {"OTA_HTTP_PORT": port, "OTA_ADMIN_PASSWORD": "e2e-secret-pw", "OTA_HTTP_WORKERS": 2}
    )
    keygen = run_ota(["keygen"], env, tmp_path)
    assert keygen.returncode == 0, keygen.stderr
    (tmp_path / "packages").mkdir(exist_ok=True)
    (tmp_path / "packages" / "fw.bin").write_bytes(b"x" * 5000)
    proc = OtaProcess(["http"], env, tmp_path)
    sessions: list[requests.Session] = []
    try:
        url = f"http://127.0.0.1:{port}"
        proc.wait_http(f"{url}/healthz")
        workers = psutil.Process(proc.proc.pid).children()
        assert len(workers) == 2, proc.output
        # 24 keep-alive connections: SO_REUSEPORT spreads them over both workers
        # (all on one would be a 2^-23 chance).
        for _ in range(24):
            session = requests.Session()
            response = session.get(f"{url}/packages/fw.bin", timeout=10)
            assert response.status_code == 200 and response.content == b"x" * 5000
            sessions.append(session)
        assert _serving_workers(proc.proc.pid, port) == {w.pid for w in workers}
    finally:
        for session in sessions:
            session.close()
        code = proc.stop()
    assert code == 0, proc.output
    assert "Traceback" not in proc.output, proc.output
    deadline = time.monotonic() + 5
    while any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers):
        assert time.monotonic() < deadline, "a worker outlived ota http"
        time.sleep(0.05)
