"""Turning a policy decision into the offer a device receives (pure, no I/O)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from ota_core.catalog import Catalog
from ota_core.envelope import OfferSigner
from ota_core.errors import OtaError
from ota_core.models import (
    Announcement,
    ErrorReply,
    Offer,
    Release,
    UpdateOffer,
    UpToDate,
    json_string,
)
from ota_core.policy import Decision, DeviceFacts, decide

#: How long a signed offer stays valid. A device that gets an older one (say,
#: queued in its persistent session while it was offline) re-announces.
DEFAULT_OFFER_TTL_SECONDS = 24 * 3600

_O = TypeVar("_O", UpdateOffer, UpToDate, ErrorReply)


@dataclass(frozen=True)
class OfferBuilder:
    """Builds offers, sealing each in a device-bound envelope when it has an offer key.

    ``package_base_url`` is prefixed to ``/packages/<filename>``; empty by
    default, which keeps the seed's relative ``url`` field.
    """

    package_base_url: str = ""
    offer_signer: OfferSigner | None = None
    ttl_seconds: int = DEFAULT_OFFER_TTL_SECONDS
    clock: Callable[[], float] = field(default=time.time, compare=False)
    #: release -> the serialised release part of its update offers (see update_offer_bytes)
    _tails: dict[Release, bytes] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )

    def package_url(self, release: Release) -> str:
        return f"{self.package_base_url.rstrip('/')}/packages/{release.filename}"

    def with_signer(self, signer: OfferSigner | None) -> OfferBuilder:
        return OfferBuilder(self.package_base_url, signer, self.ttl_seconds, self.clock)

    def seal(self, offer: _O) -> _O:
        """Attach the envelope and its signature (no-op without an offer key)."""
        if self.offer_signer is None:
            return offer
        manifest = offer.manifest if isinstance(offer, UpdateOffer) else None
        envelope, signature = self.offer_signer.seal(
            device_id=offer.device_id,
            nonce=offer.request_id,
            status=offer.status,
            manifest=manifest,
            issued_at=int(self.clock()),
            ttl_seconds=self.ttl_seconds,
        )
        return offer.model_copy(update={"envelope": envelope, "envelope_signature": signature})

    def update_offer_bytes(
        self, release: Release, device_id: str, request_id: str | None
    ) -> bytes:
        """``update_offer(release, device_id, request_id).to_bytes()``, built faster.

        The hot path of the bridge: the release's part of the offer is the same
        for every device, so it is serialised once per release (by the model
        itself) and only the per-device fields are added per offer. A test holds
        the bytes equal to the model path's for arbitrary valid ids.
        """
        tail = self._tails.get(release)
        if tail is None:
            full = self.update_offer_unsealed(release, "d").to_bytes()
            tail = full[full.index(b',"status":') :]
            if len(self._tails) >= 256:  # releases come and go; keep the cache small
                self._tails.clear()
            self._tails[release] = tail
        parts = [b'{"device_id":', _json_str(device_id)]
        if request_id is not None:
            parts += [b',"request_id":', _json_str(request_id)]
        if self.offer_signer is not None:
            envelope, signature = self.offer_signer.seal(
                device_id=device_id,
                nonce=request_id,
                status="update-available",
                manifest=release.manifest,
                issued_at=int(self.clock()),
                ttl_seconds=self.ttl_seconds,
            )
            parts += [
                b',"envelope":', _json_str(envelope),
                b',"envelope_signature":"', signature.encode("ascii"), b'"',
            ]
        parts.append(tail)
        return b"".join(parts)

    def update_offer_unsealed(
        self, release: Release, device_id: str, request_id: str | None = None
    ) -> UpdateOffer:
        return UpdateOffer(
            device_id=device_id,
            request_id=request_id,
            build_id=release.build_id,
            version=release.version,
            url=self.package_url(release),
            size=release.size,
            checksum=release.sha256,
            signature=release.signature,
            manifest=release.manifest,
            manifest_signature=release.manifest_signature,
            key_id=release.key_id,
        )

    def update_offer(self, release: Release, device_id: str, request_id: str | None) -> UpdateOffer:
        return self.seal(self.update_offer_unsealed(release, device_id, request_id))

    def error(self, device_id: str, request_id: str | None, error: OtaError) -> ErrorReply:
        return self.seal(error_reply(device_id, request_id, error))

    def for_device(
        self,
        catalog: Catalog,
        device: DeviceFacts,
        request_id: str | None,
        allowed: Callable[[Release, DeviceFacts], bool] | None = None,
    ) -> Offer:
        """The offer for ``device``; an :class:`OtaError` becomes an error reply."""
        try:
            decision = decide(catalog, device, allowed)
        except OtaError as e:
            return self.error(device.device_id, request_id, e)
        if decision.release is None:
            return self.up_to_date(device, request_id, decision)
        return self.update_offer(decision.release, device.device_id, request_id)

    def up_to_date(
        self, device: DeviceFacts, request_id: str | None, decision: Decision
    ) -> UpToDate:
        return self.seal(
            UpToDate(
                device_id=device.device_id,
                request_id=request_id,
                build_id=device.build_id,
                version=decision.current_version,
            )
        )

    def for_announcement(
        self,
        catalog: Catalog,
        device_id: str,
        announcement: Announcement,
        allowed: Callable[[Release, DeviceFacts], bool] | None = None,
    ) -> Offer:
        return self.for_device(
            catalog, facts_of(device_id, announcement), announcement.request_id, allowed
        )


def facts_of(device_id: str, announcement: Announcement) -> DeviceFacts:
    """What the release policy needs to know about an announcing device."""
    return DeviceFacts(
        device_id=device_id,
        build_id=announcement.build_id,
        version=announcement.version,
        hardware=announcement.hardware,
        channel=announcement.channel,
    )


def _json_str(text: str) -> bytes:
    return json_string(text).encode("ascii")


def error_reply(device_id: str, request_id: str | None, error: OtaError) -> ErrorReply:
    """An unsealed error reply; prefer :meth:`OfferBuilder.error`, which seals it."""
    return ErrorReply(
        device_id=device_id, request_id=request_id, error=error.code, detail=error.detail
    )
