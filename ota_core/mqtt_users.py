"""Mosquitto users: the password file behind ``ota mqtt-user add|remove|list|ensure-service-users``.

The production broker (``mosquitto.conf``) refuses anonymous clients. Every device has its
own user whose name **is** its device id: the ACL (``mosquitto.acl``) grants by pattern
(``ota/v1/devices/%u/...``), so a device can only announce and report as itself and only
receive its own offers. Two service users are granted by name in the ACL:

* ``ota-bridge`` (role ``bridge``): reads every announce/status topic, writes every offer.
* ``ota-monitor`` (role ``monitor``): reads ``$SYS/broker/version`` for health checks.

A role therefore only decides which name is allowed, never extra rights: access follows
from the name and the ACL alone.

The file is written in Mosquitto 2.0's format, one ``user:$7$<iterations>$<salt>$<hash>``
line per user (PBKDF2-HMAC-SHA512, 12-byte salt, 64-byte hash, standard base64). When the
``mosquitto_passwd`` tool is installed it does the hashing (fed on stdin, so the password
never appears in a process listing); otherwise this module hashes the same way. Either
way the file is created with mode 0600, and an existing file keeps its owner and group.

Mosquitto reads the file at start-up and on SIGHUP; a change takes effect after a reload.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ota_core.errors import Conflict, InvalidInput, NotFound, OtaError
from ota_core.identifiers import check_device_id

BRIDGE_USER = "ota-bridge"
MONITOR_USER = "ota-monitor"
Role = Literal["device", "bridge", "monitor"]
ROLES: tuple[Role, ...] = ("device", "bridge", "monitor")
#: The service users the shipped mosquitto.acl grants by name, and their roles.
SERVICE_USERS: dict[str, Role] = {BRIDGE_USER: "bridge", MONITOR_USER: "monitor"}
#: Environment variables ``ensure-service-users`` reads the service passwords from.
SERVICE_PASSWORD_ENV: dict[str, str] = {
    BRIDGE_USER: "OTA_MQTT_PASSWORD",
    MONITOR_USER: "OTA_MQTT_MONITOR_PASSWORD",
}

#: Mosquitto 2.0's hash type 7 (sha512-pbkdf2) and mosquitto_passwd's own defaults.
PBKDF2_TYPE = "7"
SALT_BYTES = 12
#: Low on purpose, like mosquitto_passwd's default: the broker verifies the hash on its
#: single event-loop thread at every CONNECT, so a slow hash turns a reconnect storm (or a
#: flood of CONNECTs with wrong passwords) into a stalled broker. Generated passwords carry
#: 192 bits of entropy, so a slow hash would add nothing against guessing them.
PBKDF2_ITERATIONS = 101
#: Operator-chosen passwords shorter than this are refused.
MIN_PASSWORD_LENGTH = 16
MAX_PASSWORD_LENGTH = 65535  # mosquitto_passwd's limit

Hasher = Literal["auto", "mosquitto_passwd", "python"]
_TOOL_DIRS = ("/usr/bin", "/usr/local/bin", "/usr/sbin", "/usr/local/sbin")


@dataclass(frozen=True)
class MqttUser:
    username: str
    role: Role
    scheme: str  # "sha512-pbkdf2" (Mosquitto 2.x), "sha512" (1.x) or "unknown"


def role_of(username: str) -> Role:
    return SERVICE_USERS.get(username, "device")


def check_username(username: str, role: Role) -> str:
    """A name the ACL understands for ``role``: a device id, or the service user's name."""
    if role == "device":
        check_device_id(username)
        if username in SERVICE_USERS:
            raise InvalidInput(
                f"{username!r} is the {SERVICE_USERS[username]} service user, not a device; "
                f"add it with --role {SERVICE_USERS[username]}"
            )
        return username
    expected = next(name for name, r in SERVICE_USERS.items() if r == role)
    if username != expected:
        raise InvalidInput(
            f"the {role} user must be named {expected!r}: mosquitto.acl grants the {role}'s "
            f"topics to that name (edit the ACL as well to use another)"
        )
    return username


def check_password(password: str) -> str:
    if not password or len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidInput(f"a password is 1-{MAX_PASSWORD_LENGTH} characters")
    if any(ch in password for ch in "\r\n\x00"):
        raise InvalidInput("a password cannot contain line breaks or NUL")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(
            f"a password needs at least {MIN_PASSWORD_LENGTH} characters; leave it out to "
            "have a random one generated"
        )
    return password


def generate_password() -> str:
    """192 random bits, URL-safe (no ':' or whitespace that shells or URLs would mangle)."""
    return secrets.token_urlsafe(24)


# --- hashing ---------------------------------------------------------------------------------


def hash_password(
    password: str, *, iterations: int = PBKDF2_ITERATIONS, salt: bytes | None = None
) -> str:
    """Mosquitto 2.0's encoding: ``$7$<iterations>$<base64 salt>$<base64 hash>``."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    b64 = base64.b64encode
    return f"${PBKDF2_TYPE}${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def _scheme(encoded: str) -> str:
    if encoded.startswith("$7$"):
        return "sha512-pbkdf2"
    if encoded.startswith("$6$"):
        return "sha512"
    return "unknown"


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches a stored hash (types 7 and 6, as Mosquitto 2.0 reads)."""
    parts = encoded.split("$")
    try:
        if len(parts) == 5 and parts[1] == PBKDF2_TYPE:
            iterations = int(parts[2])
            if not 0 < iterations <= 10_000_000:
                return False
            salt = base64.b64decode(parts[3], validate=True)
            expected = base64.b64decode(parts[4], validate=True)
            actual = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
        elif len(parts) == 4 and parts[1] == "6":
            salt = base64.b64decode(parts[2], validate=True)
            expected = base64.b64decode(parts[3], validate=True)
            actual = hashlib.sha512(password.encode() + salt).digest()
        else:
            return False
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(actual, expected)


def find_mosquitto_passwd() -> str | None:
    found = shutil.which("mosquitto_passwd")
    if found:
        return found
    for folder in _TOOL_DIRS:
        candidate = Path(folder) / "mosquitto_passwd"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


# --- the file --------------------------------------------------------------------------------


def read_entries(path: Path) -> dict[str, str]:
    """username -> encoded hash, in file order. A missing file has no users."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as e:
        raise OtaError(f"cannot read the password file {path}: {e}") from e
    entries: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        username, sep, encoded = line.partition(":")
        if not sep or not username or not encoded:
            raise OtaError(f"{path} line {number} is not 'username:hash'; fix or remove it")
        entries[username] = encoded
    return entries


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise writers of one password file (two provisioning scripts at once).

    The lock is on the folder, not the file: the file is replaced by rename, and a lock
    file next to it would be one more thing in the broker's config folder.
    """
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _write_entries(path: Path, entries: dict[str, str]) -> None:
    """Replace the file atomically (temp file, fsync, rename): the broker never reads half.

    New files are 0600. An existing file keeps its owner and group and its mode minus any
    world bits, so a root:mosquitto 0640 file stays readable by the broker.
    """
    mode, owner = 0o600, None
    try:
        st = path.stat()
    except FileNotFoundError:
        pass
    else:
        mode = stat.S_IMODE(st.st_mode) & 0o770 | 0o600
        owner = (st.st_uid, st.st_gid)
    data = "".join(f"{user}:{encoded}\n" for user, encoded in entries.items()).encode()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, mode)
        if owner is not None and owner != (os.geteuid(), os.getegid()):
            with contextlib.suppress(PermissionError):
                os.fchown(fd, *owner)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _run_mosquitto_passwd(tool: str, path: Path, username: str, password: str) -> None:
    if not path.exists():
        # Created here so it starts out 0600; mosquitto_passwd -c would follow the umask.
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    # Not -b: the password goes through stdin (the tool asks twice), never into argv where
    # any local user could read it in the process list. umask 077 for its backup file.
    result = subprocess.run(
        [tool, str(path), username],
        input=f"{password}\n{password}\n",
        capture_output=True,
        text=True,
        umask=0o077,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().replace(password, "***")
        raise OtaError(f"mosquitto_passwd failed on {path}: {detail}")


def add_user(
    path: Path,
    username: str,
    password: str,
    *,
    role: Role = "device",
    hasher: Hasher = "auto",
    replace: bool = False,
) -> str:
    """Add ``username`` (or set its password with ``replace``); returns the hasher used."""
    check_username(username, role)
    check_password(password)
    tool = find_mosquitto_passwd() if hasher in ("auto", "mosquitto_passwd") else None
    if hasher == "mosquitto_passwd" and tool is None:
        raise OtaError("mosquitto_passwd is not installed; use --hasher python")
    with _locked(path):
        entries = read_entries(path)
        if username in entries and not replace:
            raise Conflict(
                f"{username} is already in {path}; use --replace to set a new password"
            )
        if tool is not None:
            _run_mosquitto_passwd(tool, path, username, password)
            written = read_entries(path).get(username)
            # A newer tool may use a hash type this module cannot check (2.1: argon2id).
            if written is None or (
                _scheme(written) != "unknown" and not verify_password(password, written)
            ):
                raise OtaError(f"mosquitto_passwd did not store a usable hash for {username}")
            return "mosquitto_passwd"
        entries[username] = hash_password(password)
        _write_entries(path, entries)
        return "python"


def remove_user(path: Path, username: str) -> None:
    with _locked(path):
        entries = read_entries(path)
        if username not in entries:
            raise NotFound(f"{username} is not in {path}")
        del entries[username]
        _write_entries(path, entries)


def ensure_user(path: Path, username: str, password: str, role: Role) -> bool:
    """Make ``username`` have ``password``; True if the file changed (idempotent)."""
    check_username(username, role)
    check_password(password)
    with _locked(path):
        entries = read_entries(path)
        if verify_password(password, entries.get(username, "")):
            return False
        entries[username] = hash_password(password)
        _write_entries(path, entries)
        return True


def list_users(path: Path) -> list[MqttUser]:
    return [
        MqttUser(username, role_of(username), _scheme(encoded))
        for username, encoded in read_entries(path).items()
    ]


# --- the command -----------------------------------------------------------------------------


def default_password_file() -> Path:
    """``OTA_MQTT_PASSWORD_FILE``, else ``mosquitto.passwd`` in the data folder (git-ignored,
    like the generated admin password)."""
    explicit = os.environ.get("OTA_MQTT_PASSWORD_FILE")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("OTA_DATA_DIR") or "data") / "mosquitto.passwd"


RELOAD_HINT = (
    "Mosquitto reads the file at start and on SIGHUP: reload it now "
    "(compose: `docker compose kill -s HUP mosquitto`; systemd: `systemctl reload mosquitto`)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Maintain the Mosquitto password file: one user per device (username = device id), "
        f"plus the service users {BRIDGE_USER} and {MONITOR_USER}. The ACL (mosquitto.acl) "
        "grants topics by username, so a device can only announce as itself and only "
        "receive its own offers. " + RELOAD_HINT
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--password-file",
        type=Path,
        default=None,
        help="the Mosquitto password file (default: $OTA_MQTT_PASSWORD_FILE, "
        "else $OTA_DATA_DIR/mosquitto.passwd, i.e. data/mosquitto.passwd)",
    )
    sub = parser.add_subparsers(dest="mqtt_user_command", required=True, metavar="ACTION")

    add = sub.add_parser(
        "add",
        parents=[common],
        help="add a device (or service) user; prints a generated password once",
        description="Add a user. Without a password option a random one is generated and "
        "printed once: store it on the device, it cannot be shown again.",
    )
    add.add_argument(
        "username",
        nargs="?",
        help=f"the device id; for --role bridge/monitor it defaults to {BRIDGE_USER}/"
        f"{MONITOR_USER}",
    )
    add.add_argument(
        "--role",
        choices=ROLES,
        default="device",
        help="device (default), bridge or monitor; only decides which name is allowed, the "
        "ACL grants by name",
    )
    secret = add.add_mutually_exclusive_group()
    secret.add_argument(
        "--password", help="use this password (visible in shell history and ps; prefer the others)"
    )
    secret.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin's first line"
    )
    secret.add_argument("--password-env", metavar="NAME", help="read the password from $NAME")
    add.add_argument(
        "--replace", action="store_true", help="set a new password for an existing user"
    )
    add.add_argument(
        "--hasher",
        choices=["auto", "mosquitto_passwd", "python"],
        default="auto",
        help="auto (default): mosquitto_passwd when installed, else the same hash in Python",
    )
    add.add_argument("--json", action="store_true", help="one JSON object on stdout")

    remove = sub.add_parser("remove", parents=[common], help="remove a user (revoke a device)")
    remove.add_argument("username")

    lst = sub.add_parser("list", parents=[common], help="list users and their roles")
    lst.add_argument("--json", action="store_true")

    sub.add_parser(
        "ensure-service-users",
        parents=[common],
        help=f"set {BRIDGE_USER}/{MONITOR_USER} from $OTA_MQTT_PASSWORD/"
        "$OTA_MQTT_MONITOR_PASSWORD (idempotent; for compose start-up)",
        description=f"Make {BRIDGE_USER} have the password in $OTA_MQTT_PASSWORD and "
        f"{MONITOR_USER} the one in $OTA_MQTT_MONITOR_PASSWORD, creating the file if needed. "
        "A user whose variable is unset is left alone; device users are never touched.",
    )


def _password_from(args: argparse.Namespace) -> tuple[str, bool]:
    """(password, generated)."""
    if args.password is not None:
        return check_password(args.password), False
    if args.password_stdin:
        line = sys.stdin.readline()
        return check_password(line.rstrip("\r\n")), False
    if args.password_env:
        value = os.environ.get(args.password_env)
        if not value:
            raise InvalidInput(f"${args.password_env} is not set or empty")
        return check_password(value), False
    return generate_password(), True


def _cmd_add(args: argparse.Namespace, path: Path) -> int:
    role: Role = args.role
    username = args.username
    if username is None:
        if role == "device":
            raise InvalidInput("name the device: ota mqtt-user add DEVICE_ID")
        username = BRIDGE_USER if role == "bridge" else MONITOR_USER
    check_username(username, role)
    password, generated = _password_from(args)
    hasher = add_user(
        path, username, password, role=role, hasher=args.hasher, replace=args.replace
    )
    if args.json:
        out: dict[str, object] = {
            "username": username,
            "role": role,
            "password_file": str(path),
            "hasher": hasher,
        }
        if generated:
            out["password"] = password
        print(json.dumps(out))
        return 0
    action = "Set a new password for" if args.replace else "Added"
    print(f"{action} {role} user {username} in {path} (hashed by {hasher}).")
    if generated:
        print(f"Generated password (shown only now; store it on the device): {password}")
    print(RELOAD_HINT)
    return 0


def _cmd_list(args: argparse.Namespace, path: Path) -> int:
    users = list_users(path)
    if args.json:
        print(json.dumps([u.__dict__ for u in users], indent=2))
        return 0
    if not users:
        print(f"No users in {path}.")
        return 0
    print(f"{'USERNAME':<40} {'ROLE':<8} HASH")
    for user in users:
        print(f"{user.username:<40} {user.role:<8} {user.scheme}")
    return 0


def _cmd_ensure(path: Path) -> int:
    configured = 0
    for username, variable in SERVICE_PASSWORD_ENV.items():
        value = os.environ.get(variable)
        if not value:
            print(f"{variable} is not set: {username} left as it is.")
            continue
        configured += 1
        try:
            changed = ensure_user(path, username, value, role_of(username))
        except InvalidInput as e:
            raise InvalidInput(f"{variable}: {e.detail}") from e
        state = "set" if changed else "unchanged"
        print(f"{username}: password from {variable} {state} in {path}.")
    if not configured:
        raise InvalidInput(
            "neither OTA_MQTT_PASSWORD nor OTA_MQTT_MONITOR_PASSWORD is set; nothing to do"
        )
    return 0


def run(args: argparse.Namespace) -> int:
    path: Path = args.password_file or default_password_file()
    command = args.mqtt_user_command
    if command == "add":
        return _cmd_add(args, path)
    if command == "remove":
        check_username(args.username, role_of(args.username))
        remove_user(path, args.username)
        print(f"Removed {args.username} from {path}. {RELOAD_HINT}")
        return 0
    if command == "list":
        return _cmd_list(args, path)
    if command == "ensure-service-users":
        return _cmd_ensure(path)
    raise InvalidInput(f"unknown action {command!r}")
