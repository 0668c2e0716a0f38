"""compose.yaml's stack, run locally without Docker, with a device driven through it.

The commands come from compose.yaml itself; only what Docker would provide is replaced:
service host names become 127.0.0.1 and free ports, volumes become temp folders.
Mosquitto runs the shipped mosquitto.conf and ACL with authentication on; PostgreSQL is a
throwaway cluster; two bridge replicas share a subscription group on the services
listener; one HTTP side. Then `ota mqtt-user`-style credentials let a device in.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

import requests
import yaml

from tests.support.mosquitto import start_secure_mosquitto
from tests.support.ports import free_port
from tests.support.postgres import start_postgres

from .processes import OtaProcess, ota_env, run_ota

REPO = Path(__file__).resolve().parents[2]
PACKAGE = os.urandom(64 * 1024)


def _service(name: str) -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load((REPO / "compose.yaml").read_text())["services"]
    return services[name]


def _local_env(compose_env: dict[str, str], replacements: dict[str, str]) -> dict[str, str]:
    """compose's environment with Docker-only values (hosts, secrets) replaced."""
    env = {k: str(v) for k, v in compose_env.items()}
    env.update(replacements)
    return env


def test_compose_stack_runs_locally_and_serves_a_device(tmp_path: Path) -> None:
    bridge_password = secrets.token_urlsafe(18)
    device_password = secrets.token_urlsafe(18)
    broker = start_secure_mosquitto(
        tmp_path / "mosquitto",
        {
            "ota-bridge": bridge_password,
            "ota-monitor": secrets.token_urlsafe(18),
            "stack-dev-1": device_password,
        },
    )
    postgres = start_postgres()
    processes: list[OtaProcess] = []
    try:
        database_url = postgres.new_database()
        http_port = free_port()
        state = {
            "OTA_DATA_DIR": tmp_path / "data",
            "OTA_KEYS_DIR": tmp_path / "keys",
            "OTA_PACKAGES_DIR": tmp_path / "packages",
            "OTA_DATABASE_URL": database_url,
        }
        base = ota_env(state)
        keygen = _service("keygen")["command"]
        assert run_ota(keygen[1:], base, tmp_path).returncode == 0

        http = _service("http")
        http_env = _local_env(
            http["environment"],
            {
                "OTA_HOST": "127.0.0.1",
                "OTA_HTTP_PORT": str(http_port),
                "OTA_ADMIN_PASSWORD": "stack-admin-pw",
                "OTA_DATABASE_URL": database_url,
            },
        )
        processes.append(OtaProcess(http["command"][1:], {**base, **http_env}, tmp_path))
        url = f"http://127.0.0.1:{http_port}"
        processes[0].wait_http(f"{url}/healthz")

        services_port = broker.ports[1884]  # the internal listener the bridges use
        for name in ("bridge", "bridge-2"):
            spec = _service(name)
            env = _local_env(
                spec["environment"],
                {
                    "OTA_BROKER_URL": f"mqtt://127.0.0.1:{services_port}",
                    "OTA_MQTT_PASSWORD": bridge_password,
                    "OTA_DATABASE_URL": database_url,
                    "OTA_METRICS_PORT": str(free_port()),
                },
            )
            processes.append(OtaProcess(spec["command"][1:], {**base, **env}, tmp_path))
        for bridge in processes[1:]:
            bridge.wait_for_line("bridge subscribed")

        published = requests.post(
            f"{url}/admin/api/releases",
            auth=("admin", "stack-admin-pw"),
            data={"build_id": "stack-2", "version": "2.0.0"},
            files={"file": ("stack-2.bin", PACKAGE)},
            timeout=30,
        )
        assert published.status_code in (200, 201), published.text

        device_broker = f"mqtt://stack-dev-1:{device_password}@127.0.0.1:{broker.ports[1883]}"
        install_dir = tmp_path / "device"
        device = run_ota(
            [
                "device",
                "--device-id",
                "stack-dev-1",
                "--broker",
                device_broker,
                "--http",
                url,
                "--public-key",
                str(tmp_path / "keys" / "public.pem"),
                "--build-id",
                "factory",
                "--version",
                "1.0.0",
                "--install-dir",
                str(install_dir),
                "--json",
            ],
            base,
            tmp_path,
        )
        assert device.returncode == 0, device.stdout + device.stderr
        outcome = json.loads(device.stdout.strip().splitlines()[-1])
        assert outcome["outcome"] == "installed" and outcome["build_id"] == "stack-2", outcome
        hashes = {
            hashlib.sha256(p.read_bytes()).hexdigest()
            for p in install_dir.rglob("*")
            if p.is_file()
        }
        assert hashlib.sha256(PACKAGE).hexdigest() in hashes
    finally:
        for process in processes:
            process.stop()
        postgres.stop()
        broker.stop()
    for process in processes:
        assert "Traceback" not in process.output, process.output
