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

from ota_core.mqtt_users import BRIDGE_USER, MONITOR_USER, SERVICE_PASSWORD_ENV
from ota_core.topics import DEFAULT_PREFIX
from tests.support import (
    REPO_MOSQUITTO_ACL,
    REPO_MOSQUITTO_CONF,
    REPO_ROOT,
    MosquittoServer,
    MqttProbe,
    OtaDirs,
    start_mosquitto,
)
from tests.support.mosquitto import (
    FILE_OPTIONS,
    RELAXED_DROPPED_OPTIONS,
    enable_tls_block,
)

COMPOSE = REPO_ROOT / "compose.yaml"
MOSQUITTO_IMAGE = "eclipse-mosquitto"
#: The one-shot service that maintains the Mosquitto password file (not the product).
USERS_SERVICE = "mqtt-users"


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
    """Services that run our image (not the Mosquitto broker, not PostgreSQL)."""
    services = load_compose()["services"]
    return {
        name: spec
        for name, spec in services.items()
        if not str(spec.get("image", "")).startswith((MOSQUITTO_IMAGE, "postgres"))
    }


def subcommand(argv: list[str]) -> list[str]:
    """`ota release list --json` -> ["release", "list"]: the words before the first option."""
    words = []
    for word in argv[1:]:
        if word.startswith("-"):
            break
        words.append(word)
    return words


def conf_options(text: str) -> list[tuple[str, str]]:
    """(option, value) of every non-comment line of a mosquitto.conf."""
    options = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            options.append((key, value.strip()))
    return options


def shipped_option(name: str) -> str:
    values = [v for k, v in conf_options(REPO_MOSQUITTO_CONF.read_text()) if k == name]
    assert len(values) == 1, f"mosquitto.conf sets {name} {len(values)} times"
    return values[0]


def container_mounts(spec: dict[str, Any]) -> dict[str, str]:
    """container path -> source, for short-syntax volume entries."""
    mounts = {}
    for volume in spec.get("volumes", []):
        source, target = volume.split(":")[:2]
        mounts[target] = source
    return mounts


def mount_of(spec: dict[str, Any], path: str) -> tuple[str, str]:
    """(source, path inside that source) of the mount that holds ``path`` in a container."""
    best = ""
    for target in container_mounts(spec):
        if (path == target or path.startswith(target.rstrip("/") + "/")) and len(target) > len(
            best
        ):
            best = target
    assert best, f"nothing is mounted at {path}"
    return container_mounts(spec)[best], path[len(best) :].lstrip("/")


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
    # Bridges use the internal services listener, where replicas keep their own client ids.
    assert services["bridge"]["environment"]["OTA_BROKER_URL"] == "mqtt://mosquitto:1884"
    assert services["bridge-2"]["environment"]["OTA_MQTT_CLIENT_ID"] != (
        services["bridge"]["environment"]["OTA_MQTT_CLIENT_ID"]
    )
    assert "postgresql://" in services["bridge"]["environment"]["OTA_DATABASE_URL"]
    assert "/healthz" in json.dumps(services["http"]["healthcheck"]["test"])
    for name in ("bridge", "http", "mosquitto"):
        assert services[name].get("restart") == "unless-stopped", name


def test_compose_ota_services_share_state_volumes() -> None:
    for name, spec in ota_services().items():
        if name == USERS_SERVICE:
            continue
        targets = {volume.split(":")[1] for volume in spec["volumes"]}
        assert {"/var/lib/ota/keys", "/var/lib/ota/packages", "/var/lib/ota/data"} <= targets, name


def test_compose_bridge_logs_in_as_ota_bridge_with_a_required_secret() -> None:
    services = load_compose()["services"]
    env = services["bridge"]["environment"]
    assert env["OTA_MQTT_USERNAME"] == BRIDGE_USER
    # ${VAR:?message}: compose refuses to start without it, rather than run with no password.
    assert env["OTA_MQTT_PASSWORD"].startswith("${OTA_MQTT_PASSWORD:?")
    users_env = services[USERS_SERVICE]["environment"]
    for user, variable in SERVICE_PASSWORD_ENV.items():
        assert users_env[variable].startswith(f"${{{variable}:?"), user


def test_compose_broker_files_are_mounted_where_mosquitto_conf_expects_them() -> None:
    services = load_compose()["services"]
    broker = services["mosquitto"]
    source, _ = mount_of(broker, "/mosquitto/config/mosquitto.conf")
    assert source == "./mosquitto.conf"
    assert mount_of(broker, shipped_option("acl_file")) == ("./mosquitto.acl", "")
    # The password file is generated into a named volume (never a file in the repo) that
    # the mqtt-users service writes and the broker mounts read-only.
    auth_volume, auth_name = mount_of(broker, shipped_option("password_file"))
    assert auth_volume in (load_compose().get("volumes") or {})
    broker_target = next(
        t for t, src in container_mounts(broker).items() if src == auth_volume
    )
    assert any(
        v == f"{auth_volume}:{broker_target}:ro" for v in broker["volumes"]
    ), "the broker must not be able to write its password file"
    users = services[USERS_SERVICE]
    password_file = users["environment"]["OTA_MQTT_PASSWORD_FILE"]
    assert mount_of(users, password_file) == (auth_volume, auth_name)
    data_volume, _ = mount_of(broker, shipped_option("persistence_location"))
    assert data_volume in (load_compose().get("volumes") or {})


def test_compose_users_service_sees_only_the_password_file_as_the_broker_user() -> None:
    users = load_compose()["services"][USERS_SERVICE]
    assert subcommand(as_argv(users["command"])) == ["mqtt-user", "ensure-service-users"]
    # Mosquitto's uid in eclipse-mosquitto, so the 0600 file it writes is the broker's.
    assert str(users["user"]).split(":")[0] == "1883"
    assert set(container_mounts(users)) == {"/var/lib/ota/mqtt"}
    assert users.get("restart") == "no"
    broker = load_compose()["services"]["mosquitto"]
    assert broker["depends_on"][USERS_SERVICE]["condition"] == "service_completed_successfully"


def test_compose_broker_healthcheck_logs_in_as_the_monitor_user() -> None:
    broker = load_compose()["services"]["mosquitto"]
    check = " ".join(broker["healthcheck"]["test"])
    assert f"-u {MONITOR_USER}" in check
    assert '-P "$$OTA_MQTT_MONITOR_PASSWORD"' in check
    assert "$$SYS/broker/version" in check
    assert broker["environment"]["OTA_MQTT_MONITOR_PASSWORD"].startswith(
        "${OTA_MQTT_MONITOR_PASSWORD:?"
    )
    bridge = load_compose()["services"]["bridge"]
    assert bridge["depends_on"]["mosquitto"]["condition"] == "service_healthy"


def test_dockerfile_prepares_the_password_folder_for_the_broker_user() -> None:
    text = (REPO_ROOT / "Dockerfile").read_text()
    assert "chown 1883:1883 /var/lib/ota/mqtt" in text


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


def test_shipped_mosquitto_conf_is_locked_down() -> None:
    assert shipped_option("allow_anonymous") == "false"
    assert shipped_option("password_file") == "/mosquitto/config/auth/passwd"
    assert shipped_option("acl_file") == "/mosquitto/config/mosquitto.acl"
    assert shipped_option("persistence") == "true"
    assert shipped_option("set_tcp_nodelay") == "true"
    assert int(shipped_option("max_packet_size")) <= 65536
    # The bridge's queue holds one announcement per device during a burst: 1000 was
    # measured to drop announcements.
    assert int(shipped_option("max_queued_messages")) >= 100_000
    assert int(shipped_option("max_queued_bytes")) > 0
    options = conf_options(REPO_MOSQUITTO_CONF.read_text())
    assert "message_size_limit" not in dict(options)  # deprecated in 2.x
    # Each device-facing listener replaces client ids by usernames (a per-listener option);
    # 1884 is the internal services listener, where bridge replicas keep their client ids.
    tls_options = conf_options(enable_tls_block(REPO_MOSQUITTO_CONF.read_text()))
    listeners = [i for i, (k, _) in enumerate(tls_options) if k == "listener"]
    assert [tls_options[i][1] for i in listeners] == ["1883", "1884", "8883"]
    for start, end in zip(listeners, [*listeners[1:], len(tls_options)], strict=True):
        replaced = ("use_username_as_clientid", "true") in tls_options[start:end]
        assert replaced == (tls_options[start][1] != "1884")
    tls = dict(tls_options[listeners[2] :])
    assert tls["require_certificate"] == "true"
    assert tls["use_identity_as_username"] == "true"
    assert {"cafile", "certfile", "keyfile"} <= set(tls)


def test_shipped_acl_matches_the_topic_scheme_and_service_users() -> None:
    lines = [
        line.split()
        for line in REPO_MOSQUITTO_ACL.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    users = [words[1] for words in lines if words[0] == "user"]
    assert users == [BRIDGE_USER, MONITOR_USER]
    patterns = {(words[1], words[2]) for words in lines if words[0] == "pattern"}
    assert patterns == {
        ("write", f"{DEFAULT_PREFIX}/devices/%u/announce"),
        ("write", f"{DEFAULT_PREFIX}/devices/%u/status"),
        ("read", f"{DEFAULT_PREFIX}/devices/%u/offer"),
    }
    assert not any("%c" in words[-1] for words in lines)  # client ids are not identities
    assert not any(words[0] == "topic" and words[-1] == "#" for words in lines)


def test_repo_mosquitto_conf_is_what_the_test_broker_runs(mosquitto: MosquittoServer) -> None:
    generated = mosquitto.config_path.read_text()
    assert f"listener {mosquitto.port} 127.0.0.1" in generated
    assert "/mosquitto/" not in generated  # container paths moved into the test folder
    # The shared functional broker is the shipped one with the documented test-only
    # relaxation (anonymous, no ACL) and nothing else changed.
    assert "allow_anonymous true" in generated
    kept = dict(conf_options(generated))
    for key, value in conf_options(REPO_MOSQUITTO_CONF.read_text()):
        if key in RELAXED_DROPPED_OPTIONS:
            assert key not in kept, key
        elif key not in {"listener", "allow_anonymous", "log_dest", "persistence_location"}:
            assert (key, value) in conf_options(generated), key


def test_secure_test_broker_runs_the_shipped_conf_unmodified(
    secure_mosquitto: MosquittoServer,
) -> None:
    generated = conf_options(secure_mosquitto.config_path.read_text())
    for key, value in conf_options(REPO_MOSQUITTO_CONF.read_text()):
        if key == "listener":
            assert ("listener", f"{secure_mosquitto.port} 127.0.0.1") in generated
        elif key in FILE_OPTIONS or key == "persistence_location":
            moved = [v for k, v in generated if k == key]
            assert moved and Path(moved[0]).is_relative_to(secure_mosquitto.workdir), key
        elif key != "log_dest":
            assert (key, value) in generated, key
    assert (secure_mosquitto.workdir / "mosquitto.acl").read_text() == (
        REPO_MOSQUITTO_ACL.read_text()
    )
    password_file = secure_mosquitto.workdir / Path(shipped_option("password_file")).name
    assert password_file.stat().st_mode & 0o777 == 0o600


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
    # The shipped max_packet_size is in force: a bigger publish never reaches subscribers.
    topic = f"test/infra/{uuid.uuid4().hex}"
    limit = int(shipped_option("max_packet_size"))
    with MqttProbe(mosquitto.url) as subscriber:
        subscriber.subscribe(topic)
        with MqttProbe(mosquitto.url) as abuser:
            abuser.client.publish(topic, b"x" * (limit + 1), qos=0)
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


def test_mosquitto_queues_more_than_a_thousand_messages_for_an_offline_session(
    fresh_mosquitto: MosquittoServer,
) -> None:
    # What the bridge relies on while it restarts or falls behind a burst: the old limit
    # of 1000 queued messages per client dropped the rest silently.
    topic = f"test/infra/{uuid.uuid4().hex}"
    client_id = f"queue-{uuid.uuid4().hex[:8]}"
    count = 1500
    with MqttProbe(fresh_mosquitto.url, client_id=client_id, clean_session=False) as bridge:
        bridge.subscribe(topic, qos=1)
    with MqttProbe(fresh_mosquitto.url) as publisher:
        for n in range(count):
            info = publisher.client.publish(topic, str(n).encode(), qos=1)
        info.wait_for_publish(30)
        assert info.is_published()
    with MqttProbe(fresh_mosquitto.url, client_id=client_id, clean_session=False) as bridge:
        received = {int(bridge.expect(20).payload) for _ in range(count)}
    assert received == set(range(count))


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
