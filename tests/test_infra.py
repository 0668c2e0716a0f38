"""Build and deployment plumbing: compose.yaml, Dockerfile, mosquitto.conf, test brokers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped, unused-ignore]  # PyYAML comes with amqtt
from paho.mqtt.enums import MQTTProtocolVersion

from tests.support import REPO_ROOT, MosquittoServer, MqttProbe, OtaDirs, start_mosquitto

COMPOSE = REPO_ROOT / "compose.yaml"
MOSQUITTO_IMAGE = "eclipse-mosquitto"


def load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def ota_executable() -> str:
    # The console script installed next to the interpreter running the tests (.venv/bin/ota).
    beside = Path(sys.executable).parent / "ota"
    found = str(beside) if beside.exists() else shutil.which("ota")
    assert found, "the `ota` console command is not installed; run `make install`"
    return found


def as_argv(command: str | list[str]) -> list[str]:
    return command.split() if isinstance(command, str) else list(command)


def ota_services() -> dict[str, dict[str, Any]]:
    """Services that run our image (everything but the Mosquitto broker)."""
    services = load_compose()["services"]
    return {
        name: spec
        for name, spec in services.items()
        if not str(spec.get("image", "")).startswith(MOSQUITTO_IMAGE)
    }


def subcommand(argv: list[str]) -> list[str]:
    """`ota release list --json` -> ["release", "list"]: the words before the first option."""
    words = []
    for word in argv[1:]:
        if word.startswith("-"):
            break
        words.append(word)
    return words


def dockerfile_cmd() -> list[str]:
    for line in (REPO_ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("CMD "):
            cmd = json.loads(line.removeprefix("CMD "))
            assert isinstance(cmd, list)
            return [str(word) for word in cmd]
    raise AssertionError("Dockerfile has no CMD")


# --- compose.yaml -----------------------------------------------------------------------


def test_compose_has_broker_bridge_and_http() -> None:
    services = load_compose()["services"]
    assert str(services["mosquitto"]["image"]).startswith(f"{MOSQUITTO_IMAGE}:2")
    assert subcommand(as_argv(services["bridge"]["command"])) == ["bridge"]
    assert subcommand(as_argv(services["http"]["command"])) == ["http"]
    assert services["bridge"]["environment"]["OTA_BROKER_URL"] == "mqtt://mosquitto:1883"
    assert "/healthz" in json.dumps(services["http"]["healthcheck"]["test"])
    for name in ("bridge", "http", "mosquitto"):
        assert services[name].get("restart") == "unless-stopped", name


def test_compose_ota_services_share_state_volumes() -> None:
    for name, spec in ota_services().items():
        targets = {volume.split(":")[1] for volume in spec["volumes"]}
        assert {"/var/lib/ota/keys", "/var/lib/ota/packages", "/var/lib/ota/data"} <= targets, name


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(as_argv(spec["command"]), id=name)
        for name, spec in ota_services().items()
        if "command" in spec
    ]
    + [pytest.param(dockerfile_cmd(), id="Dockerfile-CMD")],
)
def test_compose_commands_are_real_ota_commands(argv: list[str]) -> None:
    assert argv[0] == "ota", f"{argv} does not run the ota command"
    words = subcommand(argv)
    assert words, f"{argv} names no ota subcommand"
    result = subprocess.run(
        [ota_executable(), *words, "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"`ota {' '.join(words)} --help` failed:\n{result.stderr}"


def test_every_ota_service_has_a_command() -> None:
    # Without one a service would silently run the image's default (`ota http`).
    for name, spec in ota_services().items():
        assert "command" in spec, name


def test_compose_mounts_and_build_context_exist() -> None:
    compose = load_compose()
    declared = set(compose.get("volumes") or {})
    for name, spec in compose["services"].items():
        for volume in spec.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (REPO_ROOT / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in declared, f"{name} uses undeclared volume {source}"
        build = spec.get("build")
        if build is not None:
            context = build if isinstance(build, str) else build.get("context", ".")
            assert (REPO_ROOT / context / "Dockerfile").is_file()


def test_docker_build_context_leaves_out_secrets_and_state() -> None:
    ignored = {
        line.strip().rstrip("/")
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {"keys", "data", "packages", ".venv", ".git"} <= ignored


def test_dockerfile_runs_as_non_root() -> None:
    users = [
        line.split()[1]
        for line in (REPO_ROOT / "Dockerfile").read_text().splitlines()
        if line.startswith("USER ")
    ]
    assert users and users[-1] not in {"root", "0"}


# --- Mosquitto from the repo's mosquitto.conf -------------------------------------------


def test_repo_mosquitto_conf_is_what_the_test_broker_runs(mosquitto: MosquittoServer) -> None:
    generated = mosquitto.config_path.read_text()
    assert f"listener {mosquitto.port} 127.0.0.1" in generated
    for line in ("persistence true", "max_packet_size 65536", "allow_anonymous true"):
        assert line in generated
    assert "/mosquitto/" not in generated  # container paths moved into the test folder


def test_mosquitto_relays_a_message(mosquitto: MosquittoServer) -> None:
    topic = f"test/infra/{uuid.uuid4().hex}"
    with MqttProbe(mosquitto.url) as subscriber, MqttProbe(mosquitto.url) as publisher:
        subscriber.subscribe(topic)
        publisher.publish(topic, b"hello mosquitto")
        message = subscriber.expect()
    assert (message.topic, message.payload) == (topic, b"hello mosquitto")


def test_mosquitto_speaks_mqtt5(mosquitto: MosquittoServer) -> None:
    topic = f"test/infra/{uuid.uuid4().hex}"
    with MqttProbe(mosquitto.url, protocol=MQTTProtocolVersion.MQTTv5) as probe:
        probe.subscribe(topic)
        probe.publish(topic, b"v5")
        assert probe.expect().payload == b"v5"


def test_mosquitto_refuses_oversized_messages(mosquitto: MosquittoServer) -> None:
    # The shipped max_packet_size is in force: a 70 KB publish never reaches subscribers.
    topic = f"test/infra/{uuid.uuid4().hex}"
    with MqttProbe(mosquitto.url) as subscriber:
        subscriber.subscribe(topic)
        with MqttProbe(mosquitto.url) as abuser:
            abuser.client.publish(topic, b"x" * 70_000, qos=0)
        with MqttProbe(mosquitto.url) as publisher:
            publisher.publish(topic, b"marker")
        assert subscriber.expect().payload == b"marker"


def test_mosquitto_restart_keeps_port_and_queued_messages(
    fresh_mosquitto: MosquittoServer,
) -> None:
    topic = f"test/infra/{uuid.uuid4().hex}"
    client_id = f"persistent-{uuid.uuid4().hex[:8]}"
    with MqttProbe(fresh_mosquitto.url, client_id=client_id, clean_session=False) as device:
        device.subscribe(topic, qos=1)
    with MqttProbe(fresh_mosquitto.url) as publisher:
        publisher.publish(topic, b"queued while offline", qos=1)
    port = fresh_mosquitto.port
    fresh_mosquitto.restart()
    assert fresh_mosquitto.port == port
    with MqttProbe(fresh_mosquitto.url, client_id=client_id, clean_session=False) as device:
        assert device.expect().payload == b"queued while offline"
        # The log is current while the broker runs, not only after it stops.
        assert f"as {client_id}" in fresh_mosquitto.log_text()
    assert "Saving in-memory database" in fresh_mosquitto.log_text()


def test_mosquitto_start_failure_reports_the_log(tmp_path: Path) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text("listener 1883\nno_such_option true\n")
    with pytest.raises(RuntimeError, match="no_such_option"):
        start_mosquitto(tmp_path / "broker", config=bad)


# --- Embedded amqtt broker ---------------------------------------------------------------


def test_amqtt_broker_relays_a_message(amqtt_broker: str) -> None:
    topic = f"test/infra/{uuid.uuid4().hex}"
    with MqttProbe(amqtt_broker) as subscriber, MqttProbe(amqtt_broker) as publisher:
        subscriber.subscribe(topic)
        publisher.publish(topic, b"hello amqtt")
        message = subscriber.expect()
    assert (message.topic, message.payload) == (topic, b"hello amqtt")


def test_broker_url_fixture_covers_both_brokers(broker_url: str) -> None:
    topic = f"test/infra/{uuid.uuid4().hex}"
    with MqttProbe(broker_url) as probe:
        probe.subscribe(topic)
        probe.publish(topic, b"both")
        assert probe.expect().payload == b"both"


# --- ota_dirs ------------------------------------------------------------------------------


def test_ota_dirs_settings_point_into_the_test_folders(ota_dirs: OtaDirs, tmp_path: Path) -> None:
    settings = ota_dirs.settings(http_port=18123)
    assert settings.keys_dir == ota_dirs.keys_dir
    assert settings.packages_dir == ota_dirs.packages_dir
    assert settings.data_dir == ota_dirs.data_dir
    assert settings.http_port == 18123
    assert settings.broker_url is None
    assert ota_dirs.data_dir.is_relative_to(tmp_path)
    assert (ota_dirs.keys_dir / "private.pem").stat().st_mode & 0o777 == 0o600
    assert len(ota_dirs.key_id) == 16


def test_ota_dirs_ignore_the_developers_environment(
    ota_dirs: OtaDirs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTA_DATA_DIR", "/somewhere/else")
    monkeypatch.setenv("OTA_BROKER_URL", "mqtt://elsewhere:1883")
    settings = ota_dirs.settings()
    assert settings.data_dir == ota_dirs.data_dir
    assert settings.broker_url is None
