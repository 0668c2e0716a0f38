"""What a device has installed, kept across runs in ``<install_dir>/state.json``.

::

    {"build_id": "build-1002", "version": "1.2.0", "release_counter": 3,
     "sha256": "<hex>", "installed_at": "2026-11-25T12:00:00Z"}

Written after every install (temporary file, fsync, rename, fsync of the folder),
so a power cut leaves the old state or the new one. Loaded at start, it overrides
the build and version given on the command line, and its ``release_counter`` is
the device's anti-rollback floor: an offer whose signed counter is not above it is
refused, across restarts. A state file that cannot be read is an error, not a
reason to fall back to the command line: that fallback would lower the floor.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ota_core.errors import InvalidInput, OtaError
from ota_core.identifiers import check_device_id
from ota_core.versions import parse_version

STATE_FILE_NAME = "state.json"


class StateFileError(OtaError):
    """``state.json`` exists but cannot be read or makes no sense."""

    code = "bad-state-file"


@dataclass(frozen=True)
class InstalledState:
    build_id: str
    version: str
    release_counter: int | None = None
    sha256: str | None = None
    installed_at: str | None = None  # ISO 8601, UTC

    @classmethod
    def now(
        cls, build_id: str, version: str, release_counter: int | None, sha256: str | None
    ) -> InstalledState:
        stamp = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
        return cls(build_id, version, release_counter, sha256, stamp)

    @classmethod
    def from_mapping(cls, data: dict[str, Any], where: str) -> InstalledState:
        build_id, version = data.get("build_id"), data.get("version")
        counter, sha256 = data.get("release_counter"), data.get("sha256")
        installed_at = data.get("installed_at")
        if not isinstance(build_id, str) or not isinstance(version, str):
            raise StateFileError(f"{where}: build_id and version must be strings")
        try:
            check_device_id(build_id)  # build ids follow the same rules as device ids
            parse_version(version)
        except InvalidInput as e:
            raise StateFileError(f"{where}: {e.detail.replace('device_id', 'build_id')}") from e
        if counter is not None and (
            isinstance(counter, bool) or not isinstance(counter, int) or counter < 0
        ):
            raise StateFileError(f"{where}: release_counter must be a non-negative integer")
        if sha256 is not None and not isinstance(sha256, str):
            raise StateFileError(f"{where}: sha256 must be a string")
        if installed_at is not None and not isinstance(installed_at, str):
            raise StateFileError(f"{where}: installed_at must be a string")
        return cls(build_id, version, counter, sha256, installed_at)


def state_path(install_dir: Path) -> Path:
    return install_dir / STATE_FILE_NAME


def load_state(install_dir: Path) -> InstalledState | None:
    """The saved state, or None when there is none yet."""
    path = state_path(install_dir)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StateFileError(f"cannot read {path}: {e.strerror}") from e
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise StateFileError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise StateFileError(f"{path} must hold a JSON object")
    return InstalledState.from_mapping(data, str(path))


def save_state(install_dir: Path, state: InstalledState) -> Path:
    """Write ``state.json`` atomically; returns its path."""
    install_dir.mkdir(parents=True, exist_ok=True)
    path = state_path(install_dir)
    body = json.dumps(asdict(state), indent=2, sort_keys=True).encode() + b"\n"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{STATE_FILE_NAME}.", suffix=".tmp", dir=install_dir)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(body)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    fsync_dir(install_dir)
    return path


def fsync_dir(folder: Path) -> None:
    # Makes a rename itself durable; not every platform lets a folder be opened.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
