"""A throwaway PostgreSQL cluster for tests: initdb into a temp folder, a free port, stopped after.

Works beside any PostgreSQL already running on the machine (own port, own
socket folder). As root, the server runs as the ``postgres`` system user
(PostgreSQL refuses to run as root); otherwise as the current user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.ports import free_port

SUPERUSER = "ota"


class PostgresUnavailable(RuntimeError):
    pass


def find_pg_bindir() -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for candidate in candidates:
        if (Path(candidate) / "initdb").exists():
            return Path(candidate)
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl:
        return Path(pg_ctl).parent
    raise PostgresUnavailable(
        "PostgreSQL is not installed: run `make system-deps` (apt-get install postgresql)"
    )


@dataclass
class PostgresServer:
    bindir: Path
    workdir: Path
    port: int
    run_as: str | None
    _databases: int = field(default=0, repr=False)

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = list(args)
        if self.run_as:
            command = ["runuser", "-u", self.run_as, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=check, timeout=60)

    def new_database(self) -> str:
        """A fresh, empty database; returns its SQLAlchemy URL."""
        import psycopg

        self._databases += 1
        name = f"test_{os.getpid()}_{self._databases}"
        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-m",
            "fast",
            "-w",
            "stop",
            check=False,
        )
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_postgres() -> PostgresServer:
    bindir = find_pg_bindir()
    run_as = None
    workdir = Path(tempfile.mkdtemp(prefix="ota-pg-"))
    if os.geteuid() == 0:
        run_as = "postgres"
        entry = pwd.getpwnam(run_as)
        os.chown(workdir, entry.pw_uid, entry.pw_gid)
    server = PostgresServer(bindir, workdir, free_port(), run_as)
    try:
        server._run(
            str(bindir / "initdb"),
            "-D",
            str(server.data_dir),
            "-U",
            SUPERUSER,
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        )
        options = (
            f"-p {server.port} -k {workdir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        result = server._run(
            str(bindir / "pg_ctl"),
            "-D",
            str(server.data_dir),
            "-o",
            options,
            "-l",
            str(workdir / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
            check=False,
        )
        if result.returncode != 0:
            log = (workdir / "server.log").read_text() if (workdir / "server.log").exists() else ""
            raise PostgresUnavailable(f"PostgreSQL did not start: {result.stderr}\n{log}")
    except (subprocess.CalledProcessError, OSError) as e:
        server.stop()
        detail = getattr(e, "stderr", "") or str(e)
        raise PostgresUnavailable(f"PostgreSQL could not be set up: {detail}") from e
    deadline = time.monotonic() + 30
    import psycopg

    while True:
        try:
            psycopg.connect(
                f"host=127.0.0.1 port={server.port} user={SUPERUSER} dbname=postgres"
            ).close()
            return server
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                server.stop()
                raise
            time.sleep(0.1)
