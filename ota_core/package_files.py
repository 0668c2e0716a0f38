"""The packages folder: safe name resolution, streaming hashes, atomic writes.

Every file name from outside goes through :meth:`PackageFolder.resolve`, which
refuses paths, hidden names and anything (symlinks included) that resolves
outside the folder. Writes go to a temporary file in the same folder, are
fsynced, then linked into place, so a crash never leaves a half-written package
under a real name.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ota_core.errors import ChecksumMismatch, Conflict, PackageNotFound, PayloadTooLarge
from ota_core.identifiers import check_filename

CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class PackageInfo:
    sha256: str
    size: int


def hash_stream(stream: BinaryIO) -> PackageInfo:
    digest = hashlib.sha256()
    size = 0
    while chunk := stream.read(CHUNK_BYTES):
        digest.update(chunk)
        size += len(chunk)
    return PackageInfo(digest.hexdigest(), size)


class PackageFolder:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._real_root = root.resolve()

    def resolve(self, filename: str) -> Path:
        """Path of an existing package file, or :class:`PackageNotFound`.

        Raises :class:`~ota_core.errors.InvalidFilename` (400) for a name that is
        not a plain file name.
        """
        check_filename(filename)
        candidate = self._real_root / filename
        try:
            mode = os.lstat(candidate).st_mode
        except OSError as e:
            raise PackageNotFound(f"no package named {filename!r}") from e
        if stat.S_ISREG(mode):
            # A plain file right in the (resolved) folder: nothing to follow. Downloads
            # take this path; a full resolve costs a syscall per path component.
            return candidate
        real = candidate.resolve()
        if real.parent != self._real_root or not real.is_file():
            raise PackageNotFound(f"no package named {filename!r}")
        return real

    def exists(self, filename: str) -> bool:
        try:
            self.resolve(filename)
        except PackageNotFound:
            return False
        return True

    def info(self, filename: str) -> PackageInfo:
        with self.resolve(filename).open("rb") as f:
            return hash_stream(f)

    def write_new(
        self,
        filename: str,
        chunks: Iterable[bytes],
        max_bytes: int,
        expected_sha256: str | None = None,
    ) -> PackageInfo:
        """Store a new package from ``chunks``; never replaces an existing file.

        Refuses more than ``max_bytes`` (413) and a content whose SHA-256 is not
        ``expected_sha256`` (400); in both cases nothing is left behind.
        """
        check_filename(filename)
        target = self._real_root / filename
        if os.path.lexists(target):
            raise Conflict(f"a file named {filename!r} already exists in the packages folder")
        fd, tmp_name = tempfile.mkstemp(prefix=".upload-", dir=self._real_root)
        tmp = Path(tmp_name)
        try:
            digest = hashlib.sha256()
            size = 0
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise PayloadTooLarge(
                            f"package is larger than the limit of {max_bytes} bytes"
                        )
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            info = PackageInfo(digest.hexdigest(), size)
            if expected_sha256 is not None and expected_sha256.lower() != info.sha256:
                raise ChecksumMismatch(
                    f"uploaded file has SHA-256 {info.sha256}, not the declared {expected_sha256}"
                )
            os.chmod(tmp, 0o644)
            try:
                os.link(tmp, target)  # fails if the name appeared meanwhile: no clobbering
            except FileExistsError as e:
                raise Conflict(f"a file named {filename!r} already exists") from e
            self._fsync_dir()
            return info
        finally:
            tmp.unlink(missing_ok=True)

    def sweep_stale_uploads(self, older_than_seconds: float = 3600) -> list[str]:
        """Delete temp files left by uploads that died mid-way (a crash, a kill).

        They never carry a real package name, so nothing can download or publish
        them; this only gives the disk space back. Returns the names removed.
        """
        cutoff = time.time() - older_than_seconds
        removed = []
        for path in self._real_root.glob(".upload-*"):
            try:
                if path.is_file() and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed.append(path.name)
            except FileNotFoundError:
                continue  # another process swept it first
        return removed

    def remove(self, filename: str) -> None:
        try:
            path = self.resolve(filename)
        except PackageNotFound:
            return
        path.unlink(missing_ok=True)
        self._fsync_dir()

    def _fsync_dir(self) -> None:
        fd = os.open(self._real_root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_chunks(stream: BinaryIO, chunk_bytes: int = CHUNK_BYTES) -> Iterable[bytes]:
    while chunk := stream.read(chunk_bytes):
        yield chunk
