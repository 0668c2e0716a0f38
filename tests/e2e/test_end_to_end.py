"""The whole path, as a user runs it: real processes, real brokers, real sockets.

1. ``ota run`` alone: embedded amqtt broker + bridge + HTTP side in one process.
2. The compose layout by hand: Mosquitto from the repo's ``mosquitto.conf``,
   ``ota bridge`` and ``ota http`` as separate processes sharing one database.

Each adds a release over the admin API, runs the reference device client
(``ota device``), and checks the device verified and installed it and that its
status reached the database.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import requests

from .processes import OtaProcess, ota_env, run_ota

PACKAGE = os.urandom(256 * 1024)


def _publish_release(http: str, password: str, build_id: str, version: str) -> dict[str, object]:
    response = requests.post(
        f"{http}/admin/api/releases",
        auth=("admin", password),
        data={"build_id": build_id, "version": version},
        files={"file": (f"fw-{version}.bin", PACKAGE, "application/octet-stream")},
        timeout=30,
    )
    assert response.status_code in (200, 201), response.text
    body: dict[str, object] = response.json()
    return body


def _run_device(
    env: dict[str, str], cwd: Path, broker: str, http: str, device_id: str
) -> dict[str, object]:
    install_dir = cwd / "device-install" / device_id
    result = run_ota(
        [
            "device",
            "--device-id",
            device_id,
            "--broker",
            broker,
            "--http",
            http,
            "--public-key",
            str(cwd / "keys" / "public.pem"),
            "--build-id",
            "factory-1",
            "--version",
            "1.0.0",
            "--install-dir",
            str(install_dir),
            "--timeout",
            "20",
            "--json",
        ],
        env,
        cwd,
    )
    assert result.returncode == 0, f"device failed:\n{result.stdout}\n{result.stderr}"
    outcome: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    wanted = hashlib.sha256(PACKAGE).hexdigest()
    files = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in install_dir.rglob("*")
        if p.is_file()
    }
    assert wanted in files.values(), f"package not installed in {install_dir}: {files} {outcome}"
    return outcome


def _device_record(http: str, password: str, device_id: str) -> dict[str, object]:
    """The registry's record, or {} while the bridge's write-behind has not flushed it yet."""
    response = requests.get(
        f"{http}/admin/api/devices/{device_id}", auth=("admin", password), timeout=10
    )
    if response.status_code == 404:
        return {}
    assert response.status_code == 200, response.text
    record: dict[str, object] = response.json()
    return record


def _wait_installed(http: str, password: str, device_id: str, build_id: str) -> dict[str, object]:
    import time

    deadline = time.monotonic() + 15
    record: dict[str, object] = {}
    while time.monotonic() < deadline:
        record = _device_record(http, password, device_id)
        if record.get("last_state") == "installed" and record.get("last_state_build") == build_id:
            return record
        time.sleep(0.1)
    raise AssertionError(f"status never reached the database: {record}")


def test_ota_run_all_in_one_with_embedded_broker(
    tmp_path: Path, free_port_pair: tuple[int, int]
) -> None:
    mqtt_port, http_port = free_port_pair
    env = ota_env(
        {
            "OTA_MQTT_PORT": mqtt_port,
            "OTA_HTTP_PORT": http_port,
            "OTA_ADMIN_PASSWORD": "e2e-secret-pw",
        }
    )
    server = OtaProcess(["run"], env, tmp_path)
    try:
        server.wait_for_line("Stop with Ctrl-C")
        http = f"http://127.0.0.1:{http_port}"
        server.wait_http(f"{http}/healthz")
        assert (tmp_path / "keys" / "private.pem").stat().st_mode & 0o777 == 0o600
        _publish_release(http, "e2e-secret-pw", "build-2000", "2.0.0")
        _run_device(env, tmp_path, f"mqtt://127.0.0.1:{mqtt_port}", http, "e2e-embedded")
        _wait_installed(http, "e2e-secret-pw", "e2e-embedded", "build-2000")
    finally:
        code = server.stop()
    assert code == 0, server.output
    assert "Traceback" not in server.output, server.output


def test_ota_run_generates_and_prints_admin_password(
    tmp_path: Path, free_port_pair: tuple[int, int]
) -> None:
    mqtt_port, http_port = free_port_pair
    env = ota_env({"OTA_MQTT_PORT": mqtt_port, "OTA_HTTP_PORT": http_port})
    server = OtaProcess(["run"], env, tmp_path)
    try:
        line = server.wait_for_line("password")
        stored = (tmp_path / "data" / "admin-password").read_text().strip()
        assert stored in line
        assert (tmp_path / "data" / "admin-password").stat().st_mode & 0o777 == 0o600
        http = f"http://127.0.0.1:{http_port}"
        server.wait_http(f"{http}/healthz")
        assert requests.get(f"{http}/admin/metadata", timeout=5).status_code == 401
        assert (
            requests.get(f"{http}/admin/metadata", auth=("admin", stored), timeout=5).status_code
            == 200
        )
    finally:
        server.stop()


@pytest.mark.parametrize("taken", ["http", "mqtt"])
def test_taken_port_is_reported_plainly(
    tmp_path: Path, free_port_pair: tuple[int, int], taken: str
) -> None:
    import socket

    mqtt_port, http_port = free_port_pair
    port, variable = (
        (http_port, "OTA_HTTP_PORT") if taken == "http" else (mqtt_port, "OTA_MQTT_PORT")
    )
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        env = ota_env({"OTA_MQTT_PORT": mqtt_port, "OTA_HTTP_PORT": http_port})
        result = run_ota(["run"], env, tmp_path, timeout=30)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert f"port {port}" in result.stderr and variable in result.stderr
    assert not (tmp_path / "keys").exists()  # refused before any set-up work


def test_separate_bridge_and_http_against_mosquitto(
    tmp_path: Path, mosquitto: object, free_port_pair: tuple[int, int]
) -> None:
    broker_url = mosquitto.url  # type: ignore[attr-defined]
    _, http_port = free_port_pair
    env = ota_env(
        {
            "OTA_BROKER_URL": broker_url,
            "OTA_HTTP_PORT": http_port,
            "OTA_ADMIN_PASSWORD": "e2e-secret-pw",
            "OTA_MQTT_CLIENT_ID": f"bridge-{http_port}",
        }
    )
    keygen = run_ota(["keygen"], env, tmp_path)
    assert keygen.returncode == 0, keygen.stderr
    http_proc = OtaProcess(["http"], env, tmp_path)
    bridge = OtaProcess(["bridge"], env, tmp_path)
    try:
        http = f"http://127.0.0.1:{http_port}"
        http_proc.wait_http(f"{http}/healthz")
        # The bridge reads the catalog from the shared database: a release added
        # through the HTTP process must be offered without restarting the bridge.
        _publish_release(http, "e2e-secret-pw", "build-3000", "3.0.0")
        _run_device(env, tmp_path, broker_url, http, "e2e-mosquitto")
        _wait_installed(http, "e2e-secret-pw", "e2e-mosquitto", "build-3000")
    finally:
        bridge.stop()
        http_proc.stop()
    assert "Traceback" not in bridge.output + http_proc.output, bridge.output + http_proc.output


def test_cli_release_management_and_seed_metadata(tmp_path: Path) -> None:
    env = ota_env({})
    assert run_ota(["keygen"], env, tmp_path).returncode == 0
    firmware = tmp_path / "fw-1.1.0.zip"
    firmware.write_bytes(PACKAGE)
    added = run_ota(
        ["release", "add", str(firmware), "--version", "1.1.0", "--build-id", "build-1001"],
        env,
        tmp_path,
    )
    assert added.returncode == 0, added.stderr
    assert (tmp_path / "packages" / "fw-1.1.0.zip").read_bytes() == PACKAGE
    again = run_ota(
        ["release", "add", str(firmware), "--version", "1.1.0", "--build-id", "build-1001"],
        env,
        tmp_path,
    )
    assert again.returncode != 0 and "already exists" in again.stderr
    shutil.copy(firmware, tmp_path / "packages" / "ota-1.2.0.zip")
    (tmp_path / "metadata.json").write_text(
        json.dumps({"build-1002": {"version": "1.2.0", "filename": "ota-1.2.0.zip"}})
    )
    imported = run_ota(["import-metadata", "metadata.json"], env, tmp_path)
    assert imported.returncode == 0, imported.stderr
    listing = run_ota(["release", "list", "--json"], env, tmp_path)
    assert [r["build_id"] for r in json.loads(listing.stdout)] == ["build-1002", "build-1001"]
    exported = run_ota(["export-metadata"], env, tmp_path)
    assert json.loads(exported.stdout) == {
        "build-1001": {"version": "1.1.0", "filename": "fw-1.1.0.zip"},
        "build-1002": {"version": "1.2.0", "filename": "ota-1.2.0.zip"},
    }
    deleted = run_ota(["release", "delete", "build-1001"], env, tmp_path)
    assert deleted.returncode == 0
    listing = run_ota(["release", "list", "--json"], env, tmp_path)
    assert [r["build_id"] for r in json.loads(listing.stdout)] == ["build-1002"]
    missing = run_ota(["release", "delete", "build-1001"], env, tmp_path)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
