"""Device-side verification of an offer and its package.

Pure logic over bytes: this module does no network or file I/O. The reference
device client feeds it the offer it received and the package bytes it
downloads, chunk by chunk. Checks run in this order and the first failure
raises :class:`~ota_core.errors.VerificationFailed` whose ``reason`` names it:

=========================  =====================================================
reason                     meaning
=========================  =====================================================
``envelope-signature``     no envelope, or not signed by a trusted offer key
``wrong-device``           the offer names another device
``wrong-request``          the offer answers a request this device did not send
``expired``                the envelope's validity window has passed
``not-yet-valid``          the envelope was issued in the future (clock skew)
``manifest-hash``          the manifest is not the one the envelope names
``manifest-signature``     the manifest bytes are not signed by the release key
``manifest-mismatch``      an offer field disagrees with the signed manifest
``checksum-signature``     the checksum is not signed by the release key
``hardware-mismatch``      the manifest is for other hardware
``rollback``               the version or release counter is not newer than installed
``size-exceeded``          the download is longer than the signed size
``size-mismatch``          the download ended short of the signed size
``checksum-mismatch``      the package's SHA-256 is not the signed one
=========================  =====================================================

Without trusted offer keys (``offer_keys=None``) the envelope checks are
skipped, which is how a device built against the seed's API behaves; the
reference client always pins them.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ota_core.envelope import CLOCK_SKEW_SECONDS, OfferEnvelope, TrustedOfferKeys
from ota_core.errors import InvalidInput, VerificationFailed
from ota_core.models import Offer, ReleaseManifest, UpdateOffer
from ota_core.signing import ReleaseVerifier
from ota_core.versions import parse_version


@dataclass(frozen=True)
class OfferChecker:
    """Checks offers for one device against its pinned keys and installed state."""

    verifier: ReleaseVerifier
    device_id: str
    installed_version: str
    hardware: str | None = None
    installed_counter: int | None = None
    offer_keys: TrustedOfferKeys | None = None
    #: Accept sealed offers with no nonce: offers pushed without a request.
    accept_push: bool = True
    clock: Callable[[], float] = field(default=time.time, compare=False)

    def check_envelope(self, offer: Offer, expected_request_id: str | None) -> OfferEnvelope | None:
        """Envelope, device and nonce checks shared by every kind of offer."""
        envelope: OfferEnvelope | None = None
        now = int(self.clock())
        if self.offer_keys is not None:
            if offer.envelope is None or offer.envelope_signature is None:
                raise VerificationFailed("envelope-signature", "offer carries no signed envelope")
            envelope = self.offer_keys.verify(offer.envelope, offer.envelope_signature, now)
        if offer.device_id != self.device_id or (
            envelope is not None and envelope.device_id != self.device_id
        ):
            raise VerificationFailed("wrong-device", "offer is for another device")
        if envelope is not None:
            if envelope.nonce is None:
                if not self.accept_push:
                    raise VerificationFailed("wrong-request", "offer answers no request of ours")
            elif envelope.nonce != expected_request_id or offer.request_id != envelope.nonce:
                raise VerificationFailed("wrong-request", "offer answers another request")
            if now > envelope.expires_at + CLOCK_SKEW_SECONDS:
                raise VerificationFailed("expired", f"offer expired at {envelope.expires_at}")
            if envelope.issued_at > now + CLOCK_SKEW_SECONDS:
                raise VerificationFailed("not-yet-valid", f"offer issued at {envelope.issued_at}")
            if envelope.status != offer.status:
                raise VerificationFailed("manifest-hash", "envelope is for another kind of offer")
        elif expected_request_id is not None and offer.request_id != expected_request_id:
            raise VerificationFailed("wrong-request", "offer does not answer our request")
        return envelope

    def check(self, offer: UpdateOffer, expected_request_id: str | None = None) -> ReleaseManifest:
        """Return the verified manifest of an update offer, or raise on the first failure."""
        envelope = self.check_envelope(offer, expected_request_id)
        manifest_bytes = offer.manifest.encode("utf-8")
        if envelope is not None and (
            hashlib.sha256(manifest_bytes).hexdigest() != envelope.manifest_sha256
        ):
            raise VerificationFailed("manifest-hash", "manifest is not the one the envelope names")
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
        if (
            self.installed_counter is not None
            and manifest.release_counter <= self.installed_counter
        ):
            raise VerificationFailed(
                "rollback",
                f"release counter {manifest.release_counter} is not above {self.installed_counter}",
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
