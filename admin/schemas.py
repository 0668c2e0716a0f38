"""Bodies of the admin API and the validation of admin-supplied release fields."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from ota_core.errors import InvalidInput
from ota_core.identifiers import BuildId, Channel, Filename, HardwareId, VersionStr
from ota_core.models import Notes, Release, describe_validation_error
from ota_core.offers import OfferBuilder
from ota_core.releases import ReleaseRequest

_SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")


class ReleaseFields(BaseModel):
    """A new release as an admin describes it; validated before any file is touched."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"build_id": "build-1002", "version": "1.2.0", "filename": "ota-1.2.0.zip"}
            ]
        },
    )

    build_id: BuildId
    version: VersionStr
    filename: Filename
    hardware: HardwareId | None = None
    channel: Channel | None = None
    notes: Notes | None = None

    @classmethod
    def parse(cls, data: dict[str, Any]) -> ReleaseFields:
        """Validate form input; empty optional fields (as browsers send them) mean "none"."""
        cleaned = {
            k: (v or None) if k in {"hardware", "channel", "notes"} else v for k, v in data.items()
        }
        try:
            return cls.model_validate(cleaned)
        except ValidationError as e:
            raise InvalidInput(describe_validation_error(e)) from e

    def to_request(self) -> ReleaseRequest:
        return ReleaseRequest(
            build_id=self.build_id,
            version=self.version,
            filename=self.filename,
            hardware=self.hardware,
            channel=self.channel,
            notes=self.notes,
        )


def parse_sha256(value: str | None) -> str | None:
    """A declared checksum: 64 hex digits (any case), or nothing."""
    if not value:
        return None
    value = value.strip()
    if not _SHA256_RE.fullmatch(value):
        raise InvalidInput("sha256 must be 64 hexadecimal digits")
    return value.lower()


class ReleaseOut(BaseModel):
    build_id: str
    version: str
    filename: str
    url: str
    size: int
    sha256: str
    signature: str
    manifest: str
    manifest_signature: str
    key_id: str
    hardware: str | None
    channel: str | None
    release_counter: int
    notes: str | None
    created_at: datetime

    @classmethod
    def of(cls, release: Release, offers: OfferBuilder) -> ReleaseOut:
        return cls(url=offers.package_url(release), **release.model_dump(exclude={"url"}))


class DeviceOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    device_id: str
    hardware: str | None
    channel: str | None
    build_id: str | None
    version: str | None
    last_seen: datetime
    last_offered_build: str | None
    last_state: str | None
    last_state_build: str | None
    last_detail: str | None
    last_status_at: datetime | None


class ImportResult(BaseModel):
    added: list[str]
    problems: list[str]
