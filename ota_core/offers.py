"""Turning a policy decision into the offer a device receives (pure, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass

from ota_core.catalog import Catalog
from ota_core.errors import OtaError
from ota_core.models import Announcement, ErrorReply, Offer, Release, UpdateOffer, UpToDate
from ota_core.policy import DeviceFacts, decide


@dataclass(frozen=True)
class OfferBuilder:
    """Builds offers; ``package_base_url`` is prefixed to ``/packages/<filename>``.

    Empty by default, which keeps the seed's relative ``url`` field.
    """

    package_base_url: str = ""

    def package_url(self, release: Release) -> str:
        return f"{self.package_base_url.rstrip('/')}/packages/{release.filename}"

    def update_offer(self, release: Release, device_id: str, request_id: str | None) -> UpdateOffer:
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

    def for_device(self, catalog: Catalog, device: DeviceFacts, request_id: str | None) -> Offer:
        """The offer for ``device``; an :class:`OtaError` becomes an error reply."""
        try:
            decision = decide(catalog, device)
        except OtaError as e:
            return error_reply(device.device_id, request_id, e)
        if decision.release is None:
            return UpToDate(
                device_id=device.device_id,
                request_id=request_id,
                build_id=device.build_id,
                version=decision.current_version,
            )
        return self.update_offer(decision.release, device.device_id, request_id)

    def for_announcement(
        self, catalog: Catalog, device_id: str, announcement: Announcement
    ) -> Offer:
        facts = DeviceFacts(
            device_id=device_id,
            build_id=announcement.build_id,
            version=announcement.version,
            hardware=announcement.hardware,
            channel=announcement.channel,
        )
        return self.for_device(catalog, facts, announcement.request_id)


def error_reply(device_id: str, request_id: str | None, error: OtaError) -> ErrorReply:
    return ErrorReply(
        device_id=device_id, request_id=request_id, error=error.code, detail=error.detail
    )
