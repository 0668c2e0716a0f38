"""Device-side verification of an offer and its package.

Pure logic over bytes: this module does no network or file I/O. The reference
device client feeds it the offer it received and the package bytes it
downloads, chunk by chunk; the first failing check raises
:class:`~ota_core.errors.VerificationFailed` whose ``reason`` names it:

=======================  ==================================================
reason                   meaning
=======================  ==================================================
``wrong-device``         the offer names another device
``wrong-request``        the offer answers a request this device did not send
``manifest-signature``   the manifest bytes are not signed by the release key
``manifest-mismatch``    an offer field disagrees with the signed manifest
``checksum-signature``   the checksum is not signed by the release key
``hardware-mismatch``    the manifest is for other hardware
``rollback``             the manifest's version is not newer than installed
``size-exceeded``        the download is longer than the signed size
``size-mismatch``        the download ended short of the signed size
``checksum-mismatch``    the package's SHA-256 is not the signed one
=======================  ==================================================
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from ota_core.errors import InvalidInput, VerificationFailed
from ota_core.models import ReleaseManifest, UpdateOffer
from ota_core.signing import ReleaseVerifier
from ota_core.versions import parse_version


@dataclass(frozen=True)
class OfferChecker:
    """Checks an :class:`UpdateOffer` for one device against its pinned release key."""

    verifier: ReleaseVerifier
    device_id: str
    installed_version: str
    hardware: str | None = None

    def check(self, offer: UpdateOffer, expected_request_id: str | None = None) -> ReleaseManifest:
        """Return the verified manifest, or raise on the first failing check."""
        if offer.device_id != self.device_id:
            raise VerificationFailed("wrong-device", f"offer is for {offer.device_id!r}")
        if expected_request_id is not None and offer.request_id != expected_request_id:
            raise VerificationFailed("wrong-request", "offer does not answer our request")
        manifest_bytes = offer.manifest.encode("utf-8")
        # Verify the bytes as received, and only then parse them.
        self.verifier.verify(manifest_bytes, offer.manifest_signature, "manifest-signature")
        try:
            manifest = ReleaseManifest.from_bytes(manifest_bytes)
        except InvalidInput as e:
            raise VerificationFailed("manifest-mismatch", e.detail) from e
        for name, offered, signed in (
            ("build_id", offer.build_id, manifest.build_id),
            ("version", offer.version, manifest.version),
            ("checksum", offer.checksum, manifest.sha256),
            ("size", offer.size, manifest.size),
            ("key_id", offer.key_id, manifest.key_id),
        ):
            if offered != signed:
                raise VerificationFailed("manifest-mismatch", f"{name} differs from the manifest")
        self.verifier.verify(manifest.sha256.encode("ascii"), offer.signature, "checksum-signature")
        if manifest.hardware is not None and manifest.hardware != self.hardware:
            raise VerificationFailed(
                "hardware-mismatch", f"package is for {manifest.hardware!r}, not {self.hardware!r}"
            )
        if parse_version(manifest.version) <= parse_version(self.installed_version):
            raise VerificationFailed(
                "rollback",
                f"{manifest.version} is not newer than installed {self.installed_version}",
            )
        return manifest


@dataclass
class PackageDigest:
    """Streams a download through SHA-256, refusing more bytes than were signed."""

    expected_size: int
    expected_sha256: str
    received: int = 0
    _hash: hashlib._Hash = field(default_factory=hashlib.sha256, repr=False)

    def update(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received > self.expected_size:
            raise VerificationFailed(
                "size-exceeded", f"download passed the signed size of {self.expected_size} bytes"
            )
        self._hash.update(chunk)

    def finish(self) -> str:
        if self.received != self.expected_size:
            raise VerificationFailed(
                "size-mismatch", f"got {self.received} of {self.expected_size} bytes"
            )
        digest = self._hash.hexdigest()
        if digest != self.expected_sha256:
            raise VerificationFailed("checksum-mismatch", "package SHA-256 is not the signed one")
        return digest
