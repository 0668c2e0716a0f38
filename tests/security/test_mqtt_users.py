"""``ota mqtt-user``: the Mosquitto password file, checked against real Mosquitto."""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ota_core.errors import Conflict, InvalidDeviceId, InvalidInput, NotFound
from ota_core.mqtt_users import (
    BRIDGE_USER,
    MONITOR_USER,
    PBKDF2_ITERATIONS,
    SALT_BYTES,
    add_user,
    ensure_user,
    find_mosquitto_passwd,
    hash_password,
    list_users,
    read_entries,
    remove_user,
    verify_password,
)
from tests.support import REPO_MOSQUITTO_ACL, MosquittoServer, connack, start_mosquitto

WAIT = 20.0
PASSWORD_FILE_NAME = "passwd"  # basename of mosquitto.conf's password_file
needs_mosquitto_passwd = pytest.mark.skipif(
    find_mosquitto_passwd() is None, reason="mosquitto_passwd is not installed"
)


def ota(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> (
    subprocess.CompletedProcess[str]
):
    executable = Path(sys.executable).parent / "ota"
    return subprocess.run(
        [str(executable), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def generated_password(stdout: str) -> str:
    lines = [line for line in stdout.splitlines() if line.startswith("Generated password")]
    assert len(lines) == 1, stdout
    return lines[0].rsplit(" ", 1)[1]


def start_broker_with(folder: Path, password_file: Path) -> MosquittoServer:
    """The shipped conf and ACL, with this password file (as compose mounts it)."""
    if password_file.parent != folder:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(password_file, folder / PASSWORD_FILE_NAME)
    return start_mosquitto(folder, secure=True, files={"mosquitto.acl": REPO_MOSQUITTO_ACL})


def wait_for_connack(url: str, username: str, password: str, expected: str) -> None:
    deadline = time.monotonic() + WAIT
    while (answer := connack(url, username=username, password=password)) != expected:
        assert time.monotonic() < deadline, f"{username}: {answer}, expected {expected}"
        time.sleep(0.05)


# --- the hash format --------------------------------------------------------------------------


def test_hash_has_mosquitto_2_format() -> None:
    encoded = hash_password("a-password-of-some-length", salt=b"s" * SALT_BYTES)
    kind, iterations, salt, digest = encoded.split("$")[1:]
    assert (kind, int(iterations)) == ("7", PBKDF2_ITERATIONS)
    assert base64.b64decode(salt) == b"s" * SALT_BYTES
    assert len(base64.b64decode(digest)) == 64  # SHA-512
    assert verify_password("a-password-of-some-length", encoded)
    assert not verify_password("a-password-of-some-lengtH", encoded)
    assert hash_password("same") != hash_password("same")  # fresh salt each time


@needs_mosquitto_passwd
def test_hashes_written_by_mosquitto_passwd_verify_here(tmp_path: Path) -> None:
    tool = find_mosquitto_passwd()
    assert tool is not None
    path = tmp_path / "pw"
    subprocess.run(
        [tool, "-c", "-b", str(path), "dev-x", "the-right-password-123"],
        check=True,
        capture_output=True,
    )
    encoded = read_entries(path)["dev-x"]
    assert encoded.startswith("$7$")
    assert verify_password("the-right-password-123", encoded)
    assert not verify_password("the-wrong-password-123", encoded)


@pytest.mark.parametrize(
    "hasher",
    ["python", pytest.param("mosquitto_passwd", marks=needs_mosquitto_passwd)],
)
def test_mosquitto_accepts_users_added_by_the_command(tmp_path: Path, hasher: str) -> None:
    folder = tmp_path / "broker"
    folder.mkdir()
    password_file = folder / PASSWORD_FILE_NAME
    result = ota("mqtt-user", "add", "dev-cli-1", "--password-file", str(password_file),
                 "--hasher", hasher)
    assert result.returncode == 0, result.stderr
    assert f"hashed by {hasher}" in result.stdout
    password = generated_password(result.stdout)
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    server = start_broker_with(folder, password_file)
    try:
        assert connack(server.url, username="dev-cli-1", password=password) == "Success"
        assert connack(server.url, username="dev-cli-1", password=password + "x") == (
            "Not authorized"
        )
    finally:
        server.stop()
    assert not [p for p in folder.iterdir() if p.name.startswith((".passwd", "passwd.tmp"))]


def test_provisioning_and_revocation_take_effect_on_sighup(tmp_path: Path) -> None:
    folder = tmp_path / "broker"
    password_file = folder / PASSWORD_FILE_NAME
    add_user(password_file, "dev-first", "first-device-password", hasher="python")
    server = start_broker_with(folder, password_file)
    try:
        add_user(password_file, "dev-new", "new-device-password!", hasher="python")
        assert connack(server.url, username="dev-new", password="new-device-password!") == (
            "Not authorized"  # not before the broker re-reads the file
        )
        server.reload()
        wait_for_connack(server.url, "dev-new", "new-device-password!", "Success")

        remove_user(password_file, "dev-first")
        server.reload()
        wait_for_connack(server.url, "dev-first", "first-device-password", "Not authorized")
        assert connack(server.url, username="dev-new", password="new-device-password!") == (
            "Success"
        )
    finally:
        server.stop()


# --- the command ------------------------------------------------------------------------------


def test_add_prints_a_generated_password_once_and_lists_roles(tmp_path: Path) -> None:
    path = tmp_path / "auth" / "passwd"
    first = ota("mqtt-user", "add", "dev-0001", "--password-file", str(path))
    assert first.returncode == 0, first.stderr
    password = generated_password(first.stdout)
    assert len(password) >= 32
    assert first.stdout.count(password) == 1
    assert password not in first.stderr
    assert password not in path.read_text()

    bridge = ota("mqtt-user", "add", "--role", "bridge", "--password-file", str(path), "--json")
    assert bridge.returncode == 0, bridge.stderr
    out = json.loads(bridge.stdout)
    assert (out["username"], out["role"]) == (BRIDGE_USER, "bridge")
    assert verify_password(out["password"], read_entries(path)[BRIDGE_USER])

    listing = ota("mqtt-user", "list", "--password-file", str(path), "--json")
    assert json.loads(listing.stdout) == [
        {"username": "dev-0001", "role": "device", "scheme": "sha512-pbkdf2"},
        {"username": BRIDGE_USER, "role": "bridge", "scheme": "sha512-pbkdf2"},
    ]
    assert password not in listing.stdout
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_default_password_file_is_in_the_data_folder(tmp_path: Path) -> None:
    result = ota("mqtt-user", "add", "dev-d", env={"OTA_DATA_DIR": str(tmp_path / "data")})
    assert result.returncode == 0, result.stderr
    assert "dev-d" in read_entries(tmp_path / "data" / "mosquitto.passwd")
    explicit = tmp_path / "elsewhere"
    result = ota("mqtt-user", "add", "dev-e", env={"OTA_MQTT_PASSWORD_FILE": str(explicit)})
    assert result.returncode == 0, result.stderr
    assert list(read_entries(explicit)) == ["dev-e"]


@pytest.mark.parametrize(
    "username",
    ["a/b", "+", "#", "dev/+/x", "x" * 65, "", "dev 1", "dév", BRIDGE_USER, MONITOR_USER],
)
def test_add_refuses_names_that_are_not_device_ids(tmp_path: Path, username: str) -> None:
    path = tmp_path / "passwd"
    add_user(path, "dev-keep", "keep-this-password", hasher="python")
    before = path.read_bytes()
    result = ota("mqtt-user", "add", username, "--password-file", str(path))
    assert result.returncode != 0
    assert result.stderr.startswith("ota: ") or "usage" in result.stderr
    assert path.read_bytes() == before


def test_service_roles_are_bound_to_their_acl_names(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    with pytest.raises(InvalidInput, match="ota-bridge"):
        add_user(path, "my-bridge", "a-long-enough-password", role="bridge")
    with pytest.raises(InvalidDeviceId):
        add_user(path, "dev/1", "a-long-enough-password")
    monitor = ota("mqtt-user", "add", "--role", "monitor", "--password-file", str(path))
    assert monitor.returncode == 0, monitor.stderr
    assert list(read_entries(path)) == [MONITOR_USER]


def test_password_sources_and_rules(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    chosen = "from-stdin-and-long-enough"
    result = ota("mqtt-user", "add", "dev-s", "--password-stdin", "--password-file", str(path),
                 stdin=chosen + "\n")
    assert result.returncode == 0, result.stderr
    assert "Generated password" not in result.stdout and chosen not in result.stdout
    assert verify_password(chosen, read_entries(path)["dev-s"])

    result = ota("mqtt-user", "add", "dev-env", "--password-env", "SOME_SECRET",
                 "--password-file", str(path), env={"SOME_SECRET": "from-the-environment-1"})
    assert result.returncode == 0, result.stderr
    assert verify_password("from-the-environment-1", read_entries(path)["dev-env"])

    short = ota("mqtt-user", "add", "dev-short", "--password", "short", "--password-file",
                str(path))
    assert short.returncode != 0 and "16 characters" in short.stderr
    assert "dev-short" not in read_entries(path)


def test_existing_users_need_replace_and_removal_reports_unknown_users(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    add_user(path, "dev-r", "original-password-1", hasher="python")
    with pytest.raises(Conflict):
        add_user(path, "dev-r", "another-password-22", hasher="python")
    assert verify_password("original-password-1", read_entries(path)["dev-r"])
    add_user(path, "dev-r", "another-password-22", hasher="python", replace=True)
    assert verify_password("another-password-22", read_entries(path)["dev-r"])
    remove_user(path, "dev-r")
    assert read_entries(path) == {}
    with pytest.raises(NotFound):
        remove_user(path, "dev-r")
    result = ota("mqtt-user", "remove", "dev-r", "--password-file", str(path))
    assert result.returncode == 1 and "not in" in result.stderr


def test_an_existing_file_keeps_its_group_mode_and_other_lines(tmp_path: Path) -> None:
    # e.g. Debian's root:mosquitto 0640 /etc/mosquitto/passwd: the broker must still read it.
    path = tmp_path / "passwd"
    add_user(path, "dev-1", "first-password-1234", hasher="python")
    add_user(path, "dev-2", "second-password-1234", hasher="python")
    os.chmod(path, 0o644)  # world-readable: the world bit is dropped on the next write
    remove_user(path, "dev-1")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert list(read_entries(path)) == ["dev-2"]
    assert list_users(path)[0].role == "device"


def test_corrupt_file_is_reported_not_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    path.write_text("dev-1:$7$101$abc$def\nthis line has no colon\n")
    result = ota("mqtt-user", "add", "dev-2", "--password-file", str(path))
    assert result.returncode == 1 and "line 2" in result.stderr
    assert "dev-2" not in path.read_text()


def test_ensure_service_users_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "auth" / "passwd"
    add_user(path, "dev-kept", "device-password-123", hasher="python")
    env = {"OTA_MQTT_PASSWORD": "bridge-password-123456", "OTA_MQTT_MONITOR_PASSWORD":
           "monitor-password-123456", "OTA_MQTT_PASSWORD_FILE": str(path)}
    first = ota("mqtt-user", "ensure-service-users", env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count(" set in ") == 2
    snapshot = path.read_bytes()
    second = ota("mqtt-user", "ensure-service-users", env=env)
    assert second.returncode == 0 and second.stdout.count("unchanged") == 2
    assert path.read_bytes() == snapshot  # nothing rewritten when nothing changed
    assert "bridge-password-123456" not in first.stdout + second.stdout

    rotated = ota("mqtt-user", "ensure-service-users",
                  env={**env, "OTA_MQTT_PASSWORD": "rotated-bridge-password"})
    assert rotated.returncode == 0, rotated.stderr
    entries = read_entries(path)
    assert verify_password("rotated-bridge-password", entries[BRIDGE_USER])
    assert verify_password("monitor-password-123456", entries[MONITOR_USER])
    assert verify_password("device-password-123", entries["dev-kept"])
    assert not ensure_user(path, MONITOR_USER, "monitor-password-123456", "monitor")

    nothing = ota("mqtt-user", "ensure-service-users",
                  env={"OTA_MQTT_PASSWORD_FILE": str(path)})
    assert nothing.returncode == 1
