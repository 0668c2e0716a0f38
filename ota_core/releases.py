"""Publishing and removing releases: the one place that touches files, keys and store together.

Both admin paths (upload, or naming a file already in ``packages/``), the
seed's form endpoints, the CLI and the metadata import all go through
:class:`ReleaseService`, so the rules are enforced once:

* build id, filename and release counter are unique (409 otherwise);
* the package is hashed by streaming, signed once, and stored with its signatures;
* an upload is written to a temp file, fsynced and linked into place before the
  catalog row is committed; if the commit fails, the new file is removed again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ota_core.catalog import Catalog, sign_release
from ota_core.errors import OtaError
from ota_core.identifiers import check_filename
from ota_core.models import Release
from ota_core.package_files import PackageFolder
from ota_core.signing import ReleaseSigner
from ota_core.store.releases import ReleaseStore
from ota_core.store.rollouts import RolloutSpec
from ota_core.versions import parse_version


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class ReleaseRequest:
    """What an admin supplies for a new release."""

    build_id: str
    version: str
    filename: str
    hardware: str | None = None
    channel: str | None = None
    notes: str | None = None
    release_counter: int | None = None


class ReleaseService:
    def __init__(
        self,
        store: ReleaseStore,
        packages: PackageFolder,
        signer: ReleaseSigner,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.store = store
        self.packages = packages
        self.signer = signer
        self._clock = clock

    def catalog(self) -> Catalog:
        return self.store.load_catalog()

    def _prepare(self, request: ReleaseRequest) -> tuple[Catalog, int]:
        parse_version(request.version)
        check_filename(request.filename)
        catalog = self.store.load_catalog()
        counter = request.release_counter or catalog.next_counter()
        catalog.check_can_add(request.build_id, request.filename, counter)
        return catalog, counter

    def _sign_and_store(
        self,
        request: ReleaseRequest,
        counter: int,
        sha256: str,
        size: int,
        rollout: RolloutSpec | None = None,
    ) -> Release:
        release = sign_release(
            self.signer,
            build_id=request.build_id,
            version=request.version,
            filename=request.filename,
            size=size,
            sha256=sha256,
            release_counter=counter,
            issued_at=self._clock(),
            hardware=request.hardware or None,
            channel=request.channel or None,
            notes=request.notes or None,
        )
        self.store.add(release, rollout)
        return release

    def add_existing(self, request: ReleaseRequest, rollout: RolloutSpec | None = None) -> Release:
        """Publish a file that is already in the packages folder (the seed's way).

        With ``rollout``, the release starts staged, atomically (see ReleaseStore.add).
        """
        _, counter = self._prepare(request)
        info = self.packages.info(request.filename)
        return self._sign_and_store(request, counter, info.sha256, info.size, rollout)

    def add_upload(
        self,
        request: ReleaseRequest,
        chunks: Iterable[bytes],
        max_bytes: int,
        expected_sha256: str | None = None,
        rollout: RolloutSpec | None = None,
    ) -> Release:
        """Store an uploaded package and publish it (staged with ``rollout``), or leave nothing."""
        _, counter = self._prepare(request)
        info = self.packages.write_new(request.filename, chunks, max_bytes, expected_sha256)
        try:
            return self._sign_and_store(request, counter, info.sha256, info.size, rollout)
        except BaseException:
            self.packages.remove(request.filename)
            raise

    def delete(self, build_id: str, delete_file: bool = False) -> Release:
        release = self.store.delete(build_id)
        if delete_file:
            self.packages.remove(release.filename)
        return release

    def import_metadata(self, data: Mapping[str, Any]) -> tuple[list[Release], list[str]]:
        """Import the seed's ``metadata.json`` shape; returns (added, problems)."""
        added: list[Release] = []
        problems: list[str] = []
        for build_id, entry in data.items():
            if (
                not isinstance(entry, Mapping)
                or not isinstance(entry.get("version"), str)
                or not isinstance(entry.get("filename"), str)
            ):
                problems.append(f"{build_id}: needs string 'version' and 'filename'")
                continue
            try:
                added.append(
                    self.add_existing(
                        ReleaseRequest(
                            build_id=str(build_id),
                            version=entry["version"],
                            filename=entry["filename"],
                            hardware=entry.get("hardware"),
                            channel=entry.get("channel"),
                        )
                    )
                )
            except OtaError as e:
                problems.append(f"{build_id}: {e.detail}")
        return added, problems


def export_metadata(catalog: Catalog) -> dict[str, dict[str, str]]:
    """The seed's ``metadata.json`` shape: ``{build_id: {version, filename}}``."""
    return {r.build_id: {"version": r.version, "filename": r.filename} for r in catalog}
