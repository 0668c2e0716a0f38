"""Real Mosquitto brokers for tests, started from the repo's own ``mosquitto.conf``.

The test broker runs the production configuration with only what a test must change
rewritten: every listener moves to a free port on 127.0.0.1, and every file or folder
the config names (persistence, password/ACL files, logs, pid file, TLS material) moves
inside the test's work folder. Everything else (limits, persistence, queues) is exactly
what ships.

Two switches, both explicit:

* ``secure=False`` (the default, for the functional tests): a **test-only relaxation** of
  authentication. ``allow_anonymous false`` becomes ``true`` and ``password_file``,
  ``acl_file`` and ``use_username_as_clientid`` are dropped, so the several hundred
  functional tests can connect anonymously with their own topic prefixes and client ids.
  Nothing else changes. Production never runs like this.
* ``secure=True``: the shipped authentication and ACL unchanged; the caller provides the
  password file and the ACL under the basenames the config names (``start_secure_mosquitto``
  does that: a generated password file and the repo's ``mosquitto.acl``).
* ``tls=True``: the shipped (commented-out) TLS listener block is switched on, exactly as
  an operator does it (see mosquitto.conf); the caller provides ca.crt, server.crt and
  server.key.
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from tests.support.ports import free_port, wait_for_port

REPO_ROOT = Path(__file__).resolve().parents[2]
REPO_MOSQUITTO_CONF = REPO_ROOT / "mosquitto.conf"
REPO_MOSQUITTO_ACL = REPO_ROOT / "mosquitto.acl"
LOG_NAME = "mosquitto.log"
TLS_BLOCK_BEGIN = "# BEGIN TLS LISTENER"
TLS_BLOCK_END = "# END TLS LISTENER"
#: Options the test-only relaxation (``secure=False``) removes; see the module docstring.
RELAXED_DROPPED_OPTIONS = frozenset({"password_file", "acl_file", "use_username_as_clientid"})

#: Options whose value is a file or folder; a test's copy points inside its work folder.
FILE_OPTIONS = frozenset(
    {
        "password_file",
        "acl_file",
        "psk_file",
        "pid_file",
        "cafile",
        "capath",
        "certfile",
        "keyfile",
        "crlfile",
        "dhparamfile",
        "include_dir",
    }
)
#: Options that would bind outside 127.0.0.1 or to a fixed port; the test listener replaces them.
DROPPED_OPTIONS = frozenset({"port", "bind_address", "bind_interface", "user"})

# Debian and the Docker image keep the broker in sbin, often not in a user's PATH.
_EXTRA_BIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin")

_LIVE: set[MosquittoServer] = set()


def find_mosquitto_tool(name: str = "mosquitto") -> str:
    """Path of ``mosquitto`` (or ``mosquitto_passwd``...): PATH first, then the sbin folders."""
    found = shutil.which(name)
    if found:
        return found
    for folder in _EXTRA_BIN_DIRS:
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise FileNotFoundError(
        f"{name} is not installed (looked in PATH and {', '.join(_EXTRA_BIN_DIRS)}); "
        "run `make system-deps` (Debian: apt-get install mosquitto)"
    )


def add_mosquitto_user(password_file: Path, username: str, password: str) -> None:
    """Add or update a user in a Mosquitto password file (creating the file if needed)."""
    command = [find_mosquitto_tool("mosquitto_passwd")]
    if not password_file.exists():
        command.append("-c")
    command += ["-b", str(password_file), username, password]
    subprocess.run(command, check=True, capture_output=True)


def _current_user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def enable_tls_block(source: str) -> str:
    """Uncomment the TLS listener block the way mosquitto.conf tells an operator to: inside
    the BEGIN/END markers, drop the '#' of lines where an option name follows it directly."""
    if TLS_BLOCK_BEGIN not in source or TLS_BLOCK_END not in source:
        raise ValueError("the config has no TLS listener block to enable")
    out, inside = [], False
    for line in source.splitlines():
        stripped = line.strip()
        if stripped == TLS_BLOCK_BEGIN:
            inside = True
        elif stripped == TLS_BLOCK_END:
            inside = False
        elif inside and len(stripped) > 1 and stripped[0] == "#" and stripped[1].isalpha():
            line = stripped[1:]
        out.append(line)
    return "\n".join(out) + "\n"


def relax_for_functional_tests(source: str) -> str:
    """The test-only relaxation behind ``secure=False``: anonymous access, no password file,
    no ACL, client ids kept. Everything else stays as shipped."""
    out = []
    for line in source.splitlines():
        key = line.strip().partition(" ")[0]
        if key in RELAXED_DROPPED_OPTIONS:
            continue
        if key == "allow_anonymous":
            line = "allow_anonymous true"
        out.append(line)
    return "\n".join(out) + "\n"


def render_test_config(
    source: str, workdir: Path, ports: Mapping[int, int], extra_options: Sequence[str] = ()
) -> str:
    """Rewrite a mosquitto.conf for a test: listeners onto ``ports`` (original -> test port)
    on 127.0.0.1, and every path option into ``workdir``. Comments are dropped."""
    lines = [
        "# Generated for a test from the repo's mosquitto.conf; see tests/support/mosquitto.py.",
        # Started as root, mosquitto drops to the `mosquitto` user, which cannot write
        # into the test's private tmp folder; stay the user that runs the tests.
        f"user {_current_user()}",
    ]
    file_log = False
    for raw in source.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        value = value.strip()
        if key in DROPPED_OPTIONS:
            continue
        if key == "listener":
            original = int(value.split()[0])
            lines.append(f"listener {ports[original]} 127.0.0.1")
        elif key == "persistence_location":
            lines.append(f"persistence_location {workdir / 'data'}/")
        elif key in FILE_OPTIONS:
            lines.append(f"{key} {workdir / Path(value).name}")
        elif key == "log_dest":
            kind = value.split()[0] if value else ""
            if kind in {"stdout", "stderr", "file"}:
                # Redirected stdout is block-buffered, so a running broker's log would lag;
                # mosquitto flushes its log file on every line. The process's own
                # stdout/stderr (start-up errors) is appended to the same file.
                if not file_log:
                    lines.append(f"log_dest file {workdir / LOG_NAME}")
                    file_log = True
            elif kind in {"topic", "none"}:
                lines.append(line)
            # syslog/dlt would leak test noise into the host's logs: dropped.
        else:
            lines.append(line)
    lines.extend(extra_options)
    return "\n".join(lines) + "\n"


def _listener_ports(source: str) -> list[int]:
    ports = []
    for raw in source.splitlines():
        parts = raw.split()
        if len(parts) >= 2 and parts[0] == "listener":
            ports.append(int(parts[1]))
    return ports


class MosquittoServer:
    """A mosquitto process owned by a test. ``stop()`` is idempotent; ``restart()`` keeps
    the port and the persistence folder, like an operator restarting the service."""

    host = "127.0.0.1"

    def __init__(
        self, binary: str, workdir: Path, config_path: Path, ports: Mapping[int, int]
    ) -> None:
        self.binary = binary
        self.workdir = workdir
        self.config_path = config_path
        #: original listener port in mosquitto.conf -> the port this test broker uses.
        self.ports = dict(ports)
        first = next(iter(self.ports.values()))
        self.port: int = self.ports.get(1883, first)
        self.log_path = workdir / LOG_NAME
        #: username -> password of the users in its password file (secure brokers).
        self.credentials: dict[str, str] = {}
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def tls_port(self) -> int:
        """The test port of the shipped 8883 TLS listener (only with ``tls=True``)."""
        if 8883 not in self.ports:
            raise AttributeError("this broker was started without its TLS listener")
        return self.ports[8883]

    def url_for(self, username: str) -> str:
        """``mqtt://user:password@host:port`` for a user of this (secure) broker."""
        return f"mqtt://{username}:{self.credentials[username]}@{self.host}:{self.port}"

    def reload(self) -> None:
        """SIGHUP: mosquitto re-reads its password file and ACL (as after provisioning)."""
        if self._process is None or self._process.poll() is not None:
            raise RuntimeError("mosquitto is not running")
        self._process.send_signal(signal.SIGHUP)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def log_text(self) -> str:
        """Everything mosquitto logged so far, across restarts (up to date while running)."""
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def start(self, timeout: float = 20.0) -> None:
        if self.running:
            raise RuntimeError(f"mosquitto on port {self.port} is already running")
        self._close_log()
        self._log = self.log_path.open("ab")
        self._log.write(f"--- starting {self.binary} -c {self.config_path}\n".encode())
        self._log.flush()
        self._process = subprocess.Popen(
            [self.binary, "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        _LIVE.add(self)
        try:
            for port in self.ports.values():
                wait_for_port(
                    self.host, port, timeout=timeout, alive=lambda: self.running, what="mosquitto"
                )
        except RuntimeError as e:
            self.stop()
            raise RuntimeError(f"{e}\n--- mosquitto log ---\n{self.log_text()}") from None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (mosquitto saves its persistence file on the way out), SIGKILL if stuck."""
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        _LIVE.discard(self)
        self._close_log()

    def kill(self) -> None:
        """SIGKILL: a crash, without the persistence save a clean stop does."""
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        _LIVE.discard(self)
        self._close_log()

    def restart(self, timeout: float = 20.0) -> None:
        self.stop()
        self.start(timeout)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> MosquittoServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<MosquittoServer {self.url} pid={self.pid} running={self.running}>"


def start_mosquitto(
    workdir: Path,
    *,
    config: Path = REPO_MOSQUITTO_CONF,
    extra_options: Sequence[str] = (),
    files: Mapping[str, bytes | Path] | None = None,
    timeout: float = 20.0,
    secure: bool = False,
    tls: bool = False,
) -> MosquittoServer:
    """Start mosquitto from ``config`` (the repo's mosquitto.conf) rewritten for a test.

    ``workdir`` receives the generated ``mosquitto.conf``, the log, the persistence
    folder, and ``files`` (name -> bytes or a file to copy): put a password or ACL file
    there under the basename the config names. ``extra_options`` are appended lines.
    ``secure=False`` (default) applies the test-only relaxation (anonymous, no ACL);
    ``secure=True`` keeps the shipped authentication; ``tls=True`` enables the shipped TLS
    listener block. See the module docstring. A free port that another process grabs
    before mosquitto binds it is retried.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "data").mkdir(exist_ok=True)
    for name, content in (files or {}).items():
        target = workdir / name
        if isinstance(content, Path):
            shutil.copyfile(content, target)
        else:
            target.write_bytes(content)
    source = config.read_text()
    if tls:
        source = enable_tls_block(source)
    if not secure:
        source = relax_for_functional_tests(source)
    for line in source.splitlines():
        key, _, value = line.strip().partition(" ")
        if key == "include_dir":
            (workdir / Path(value.strip()).name).mkdir(exist_ok=True)
    originals = _listener_ports(source) or [1883]
    binary = find_mosquitto_tool()
    config_path = workdir / "mosquitto.conf"
    attempts = 3
    for attempt in range(1, attempts + 1):
        ports = {original: free_port() for original in originals}
        config_path.write_text(render_test_config(source, workdir, ports, extra_options))
        server = MosquittoServer(binary, workdir, config_path, ports)
        try:
            server.start(timeout)
        except RuntimeError:
            if attempt < attempts and "Address already in use" in server.log_text():
                continue
            raise
        return server
    raise AssertionError("unreachable")


def start_secure_mosquitto(
    workdir: Path,
    users: Mapping[str, str],
    *,
    tls_dir: Path | None = None,
    config: Path = REPO_MOSQUITTO_CONF,
    acl: Path = REPO_MOSQUITTO_ACL,
    timeout: float = 20.0,
) -> MosquittoServer:
    """Mosquitto from the repo's conf with authentication and the ACL as shipped.

    ``users`` (username -> password) go into a password file generated by
    ``ota_core.mqtt_users`` (the Python hasher, so every secure test also proves Mosquitto
    accepts what ``ota mqtt-user`` writes). ``tls_dir``, when given, holds ca.crt,
    server.crt and server.key (scripts/make_dev_ca.py) and turns the TLS listener on.
    """
    from ota_core.mqtt_users import add_user, role_of

    workdir.mkdir(parents=True, exist_ok=True)
    source = config.read_text()
    names: dict[str, str] = {}
    for line in (enable_tls_block(source) if tls_dir else source).splitlines():
        key, _, value = line.strip().partition(" ")
        if key in FILE_OPTIONS and value:
            names[key] = Path(value.strip()).name
    if "password_file" not in names or "acl_file" not in names:
        raise ValueError(f"{config} names no password_file/acl_file: nothing to secure")
    # Written in place (mode 0600, as `ota mqtt-user` leaves it); start_mosquitto only
    # copies the ACL and TLS files in.
    password_file = workdir / names["password_file"]
    password_file.unlink(missing_ok=True)
    for username, password in users.items():
        add_user(password_file, username, password, role=role_of(username), hasher="python")
    files: dict[str, bytes | Path] = {names["acl_file"]: acl}
    if tls_dir is not None:
        for option in ("cafile", "certfile", "keyfile"):
            files[names[option]] = tls_dir / names[option]
    server = start_mosquitto(
        workdir, config=config, files=files, timeout=timeout, secure=True, tls=tls_dir is not None
    )
    server.credentials = dict(users)
    return server


@atexit.register
def _stop_leftovers() -> None:
    # A test session interrupted between start and teardown must not leave brokers behind.
    for server in list(_LIVE):
        server.kill()
