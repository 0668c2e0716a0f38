"""The release catalog as an immutable, indexed snapshot (pure data, no I/O).

The store loads a :class:`Catalog` whenever the catalog's revision changes; the
bridge and the HTTP side answer from the snapshot without touching the database.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from ota_core.errors import Conflict, InvalidInput
from ota_core.models import Release, ReleaseManifest
from ota_core.rollouts import RolloutBook
from ota_core.signing import ReleaseSigner
from ota_core.versions import parse_version


@dataclass(frozen=True)
class Catalog:
    """Releases indexed by build id and filename, newest version first, with their rollouts."""

    releases: tuple[Release, ...] = ()
    revision: int = 0
    rollouts: RolloutBook = field(default_factory=RolloutBook)
    by_build: dict[str, Release] = field(init=False, repr=False, compare=False)
    by_filename: dict[str, Release] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ordered = tuple(
            sorted(
                self.releases,
                key=lambda r: (parse_version(r.version), r.release_counter),
                reverse=True,
            )
        )
        object.__setattr__(self, "releases", ordered)
        object.__setattr__(self, "by_build", {r.build_id: r for r in ordered})
        object.__setattr__(self, "by_filename", {r.filename: r for r in ordered})

    @classmethod
    def of(
        cls,
        releases: Iterable[Release],
        revision: int = 0,
        rollouts: RolloutBook | None = None,
    ) -> Catalog:
        return cls(tuple(releases), revision, rollouts or RolloutBook())

    def __iter__(self) -> Iterator[Release]:
        return iter(self.releases)

    def __len__(self) -> int:
        return len(self.releases)

    def next_counter(self) -> int:
        return max((r.release_counter for r in self.releases), default=0) + 1

    def check_can_add(self, build_id: str, filename: str, release_counter: int) -> None:
        """Refuse a release that would collide with one already published (409)."""
        if build_id in self.by_build:
            raise Conflict(f"a release with build_id {build_id!r} already exists")
        if filename in self.by_filename:
            owner = self.by_filename[filename].build_id
            raise Conflict(f"filename {filename!r} is already published as {owner!r}")
        if any(r.release_counter == release_counter for r in self.releases):
            raise Conflict(f"release_counter {release_counter} is already used")


def sign_release(
    signer: ReleaseSigner,
    *,
    build_id: str,
    version: str,
    filename: str,
    size: int,
    sha256: str,
    release_counter: int,
    issued_at: datetime,
    hardware: str | None = None,
    channel: str | None = None,
    notes: str | None = None,
) -> Release:
    """Build the signed :class:`Release` for a package whose hash and size are known.

    This is the only place release signatures are made: once, when a release is
    added. Offers reuse the stored signatures.
    """
    manifest = ReleaseManifest.from_mapping(
        {
            "build_id": build_id,
            "version": version,
            "filename": filename,
            "size": size,
            "sha256": sha256,
            "hardware": hardware,
            "channel": channel,
            "release_counter": release_counter,
            "key_id": signer.key_id,
            "issued_at": issued_at.isoformat(timespec="seconds"),
        },
        "release",
    )
    manifest_bytes = manifest.to_bytes()
    try:
        return Release(
            build_id=build_id,
            version=version,
            filename=filename,
            size=size,
            sha256=sha256,
            signature=signer.sign_checksum(sha256),
            manifest=manifest_bytes.decode("ascii"),
            manifest_signature=signer.sign(manifest_bytes),
            key_id=signer.key_id,
            hardware=hardware,
            channel=channel,
            release_counter=release_counter,
            notes=notes,
            created_at=issued_at,
        )
    except ValueError as e:  # pydantic ValidationError is a ValueError
        raise InvalidInput(f"release: {e}") from e
