"""Request and response bodies of the device-facing HTTP API.

Field names are the seed's (``checksum``, ``signature``, ``url`` …); the extra
fields (``size``, ``manifest``, ``manifest_signature``, ``key_id``) are the ones
the MQTT offer carries, so both transports describe a release the same way.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from ota_core.identifiers import BuildId, Channel, DeviceId, HardwareId, RequestId, VersionStr
from ota_core.models import Release
from ota_core.offers import OfferBuilder


class CheckUpdateRequest(BaseModel):
    """What a device sends to ``POST /check-update`` (the seed sends the first two only)."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={"examples": [{"device_id": "device123", "build_id": "build-1001"}]},
    )

    device_id: DeviceId
    build_id: BuildId
    version: VersionStr | None = None
    hardware: HardwareId | None = None
    channel: Channel | None = None
    request_id: RequestId | None = None


class ErrorBody(BaseModel):
    status: Literal["error"] = "error"
    error: str
    detail: str


class ChecksumInfo(BaseModel):
    filename: str
    checksum: str
    signature: str


class ReleaseInfo(BaseModel):
    """One published release as devices see it (``GET /update``)."""

    build_id: str
    version: str
    filename: str
    url: str
    size: int
    checksum: str
    signature: str
    manifest: str
    manifest_signature: str
    key_id: str
    hardware: str | None = None
    channel: str | None = None

    @classmethod
    def of(cls, release: Release, offers: OfferBuilder) -> ReleaseInfo:
        return cls(
            build_id=release.build_id,
            version=release.version,
            filename=release.filename,
            url=offers.package_url(release),
            size=release.size,
            checksum=release.sha256,
            signature=release.signature,
            manifest=release.manifest,
            manifest_signature=release.manifest_signature,
            key_id=release.key_id,
            hardware=release.hardware,
            channel=release.channel,
        )


class MetadataEntry(BaseModel):
    version: str
    filename: str


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    releases: int
    catalog_revision: int
