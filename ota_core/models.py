"""Pure data: releases, manifests, device messages and offers.

Each wire object has one canonical byte form, produced by ``to_bytes`` and read
back by ``from_bytes``. Parsing never trusts its input: size, encoding, JSON
shape and every field are checked, and every failure is an
:class:`~ota_core.errors.InvalidInput` with a message a device developer can act on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from ota_core.errors import InvalidInput, PayloadTooLarge
from ota_core.identifiers import (
    BuildId,
    Channel,
    DeviceId,
    Filename,
    HardwareId,
    RequestId,
    VersionStr,
)

#: Largest announce/status payload the bridge reads. A real announcement is ~150 bytes.
MAX_MESSAGE_BYTES = 4096

Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
HexSignature = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{2,2048}$")]
KeyId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]
Detail = Annotated[str, StringConstraints(max_length=512)]
Notes = Annotated[str, StringConstraints(max_length=2000)]


def canonical_json(data: dict[str, Any]) -> bytes:
    """The one byte form used for everything that gets signed: sorted keys, no spaces."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def json_string(text: str) -> str:
    """``text`` as a JSON string: the same characters ``canonical_json`` and pydantic write.

    For printable ASCII (ids, hex, canonical JSON itself) only the backslash and the quote
    are escaped, which is several times faster than ``json.dumps``; anything else goes
    through ``json.dumps``. The bridge builds offers and envelopes with it, once per message.
    """
    if text.isascii() and text.isprintable():
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return json.dumps(text)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def load_json_object(
    payload: bytes, what: str, max_bytes: int = MAX_MESSAGE_BYTES
) -> dict[str, Any]:
    """Decode ``payload`` as one JSON object, refusing anything oversized or odd."""
    if len(payload) > max_bytes:
        raise PayloadTooLarge(f"{what} is {len(payload)} bytes; the limit is {max_bytes}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidInput(f"{what} is not valid UTF-8") from e
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except RecursionError as e:
        raise InvalidInput(f"{what} is nested too deeply") from e
    except ValueError as e:  # JSONDecodeError, NaN/Infinity, integers past the digit limit
        raise InvalidInput(f"{what} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise InvalidInput(f"{what} must be a JSON object")
    return data


def describe_validation_error(error: ValidationError) -> str:
    """One short line naming each bad field, without echoing the (untrusted) input."""
    parts = []
    for item in error.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in item["loc"]) or "payload"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


@dataclass(frozen=True, slots=True)
class DeviceFacts:
    """What a device told us about itself (from an announcement or a REST check)."""

    device_id: str
    build_id: str
    version: str | None = None
    hardware: str | None = None
    channel: str | None = None


class _WireModel(BaseModel):
    """Strict and frozen: a string field never accepts a number, nothing mutates later."""

    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")

    @classmethod
    def from_mapping(cls, data: dict[str, Any], what: str) -> Self:
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise InvalidInput(f"{what}: {describe_validation_error(e)}") from e


class ReleaseManifest(_WireModel):
    """What the release key signs once per release. Devices verify it byte for byte."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    build_id: BuildId
    version: VersionStr
    filename: Filename
    size: int = Field(ge=0)
    sha256: Sha256Hex
    hardware: HardwareId | None = None
    channel: Channel | None = None
    release_counter: int = Field(ge=0)
    key_id: KeyId
    issued_at: str

    def to_bytes(self) -> bytes:
        return canonical_json(self.model_dump(mode="json"))

    @classmethod
    def from_bytes(cls, payload: bytes) -> Self:
        return cls.from_mapping(load_json_object(payload, "manifest", 64 * 1024), "manifest")


class Release(_WireModel):
    """A published package with everything needed to offer it; computed once at upload."""

    build_id: BuildId
    version: VersionStr
    filename: Filename
    size: int = Field(ge=0)
    sha256: Sha256Hex
    signature: HexSignature
    manifest: str
    manifest_signature: HexSignature
    key_id: KeyId
    hardware: HardwareId | None = None
    channel: Channel | None = None
    release_counter: int = Field(ge=0)
    notes: Notes | None = None
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class Announcement(_WireModel):
    """Device → bridge on ``…/announce``: the build it runs now."""

    build_id: BuildId
    version: VersionStr | None = None
    hardware: HardwareId | None = None
    channel: Channel | None = None
    request_id: RequestId | None = None
    device_id: DeviceId | None = None

    @classmethod
    def from_bytes(cls, payload: bytes) -> Self:
        return cls.from_mapping(load_json_object(payload, "announcement"), "announcement")

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class DeviceState(StrEnum):
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    INSTALLING = "installing"
    INSTALLED = "installed"
    FAILED = "failed"


class StatusReport(_WireModel):
    """Device → bridge on ``…/status``: progress installing ``build_id``."""

    state: DeviceState
    build_id: BuildId
    detail: Detail | None = None
    request_id: RequestId | None = None

    @classmethod
    def from_mapping(cls, data: dict[str, Any], what: str) -> Self:
        # The state arrives as a JSON string; strict mode would refuse str → enum.
        if isinstance(data.get("state"), str):
            try:
                data = {**data, "state": DeviceState(data["state"])}
            except ValueError as e:
                allowed = ", ".join(s.value for s in DeviceState)
                raise InvalidInput(f"{what}: state must be one of {allowed}") from e
        return super().from_mapping(data, what)

    @classmethod
    def from_bytes(cls, payload: bytes) -> Self:
        return cls.from_mapping(load_json_object(payload, "status report"), "status report")

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class _Offer(_WireModel):
    device_id: DeviceId
    request_id: RequestId | None = None
    # Set when the bridge has an offer key: see ota_core.envelope.
    envelope: str | None = None
    envelope_signature: HexSignature | None = None

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class UpdateOffer(_Offer):
    """Bridge → device: install ``build_id``. Carries the release's stored signatures."""

    status: Literal["update-available"] = "update-available"
    build_id: BuildId
    version: VersionStr
    url: str
    size: int
    checksum: Sha256Hex
    signature: HexSignature
    manifest: str
    manifest_signature: HexSignature
    key_id: KeyId


class UpToDate(_Offer):
    status: Literal["up-to-date"] = "up-to-date"
    build_id: BuildId
    version: VersionStr | None = None


class ErrorReply(_Offer):
    """Sent for an announcement the bridge cannot use; ``error`` is an OtaError code."""

    status: Literal["error"] = "error"
    # device_id may be unknown-but-topic-derived; keep it a plain validated id.
    error: str
    detail: str


Offer = UpdateOffer | UpToDate | ErrorReply


def parse_offer(payload: bytes) -> Offer:
    """Device side: read an offer, whichever of the three kinds it is."""
    data = load_json_object(payload, "offer", 64 * 1024)
    kind = data.get("status")
    model: type[UpdateOffer] | type[UpToDate] | type[ErrorReply]
    if kind == "update-available":
        model = UpdateOffer
    elif kind == "up-to-date":
        model = UpToDate
    elif kind == "error":
        model = ErrorReply
    else:
        raise InvalidInput("offer: status must be update-available, up-to-date or error")
    return model.from_mapping(data, "offer")
