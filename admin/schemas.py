"""Bodies of the admin API and the validation of admin-supplied release fields."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from ota_core.errors import InvalidInput
from ota_core.explain import Explanation
from ota_core.identifiers import BuildId, Channel, DeviceId, Filename, HardwareId, VersionStr
from ota_core.models import Notes, Release, describe_validation_error
from ota_core.offers import OfferBuilder
from ota_core.releases import ReleaseRequest
from ota_core.rollouts import Rollout, validate_stages
from ota_core.store.devices import DeviceRecord
from ota_core.store.rollouts import RolloutSpec

_SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")
#: An explicit device list is for canaries and pilots; larger audiences use cohorts.
MAX_ROLLOUT_DEVICE_IDS = 10_000


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
    #: The newest rollout of this release (None: every eligible device gets it at once).
    rollout_id: int | None = None
    rollout_state: str | None = None

    @classmethod
    def of(
        cls, release: Release, offers: OfferBuilder, rollout: Rollout | None = None
    ) -> ReleaseOut:
        return cls(
            url=offers.package_url(release),
            rollout_id=rollout.rollout_id if rollout is not None else None,
            rollout_state=rollout.state.value if rollout is not None else None,
            **release.model_dump(exclude={"url"}),
        )


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


class InstallOut(BaseModel):
    build_id: str
    state: str
    rollout_id: int | None
    stage_index: int | None
    offered_at: datetime
    updated_at: datetime
    detail: str | None

    @classmethod
    def of(cls, row: dict[str, Any]) -> InstallOut:
        return cls(
            build_id=row["build_id"],
            state=row["state"],
            rollout_id=row["rollout_id"],
            stage_index=row["stage_index"],
            offered_at=datetime.fromtimestamp(row["offered_at"], UTC),
            updated_at=datetime.fromtimestamp(row["updated_at"], UTC),
            detail=row["detail"],
        )


class EventOut(BaseModel):
    at: datetime
    kind: str
    build_id: str | None
    state: str | None
    detail: str | None

    @classmethod
    def of(cls, row: dict[str, Any]) -> EventOut:
        return cls(
            at=datetime.fromtimestamp(row["at"], UTC),
            kind=row["kind"],
            build_id=row["build_id"],
            state=row["state"],
            detail=row["detail"],
        )


class DeviceDetailOut(DeviceOut):
    """One device: its record, every build offered to it, and its newest events."""

    installs: list[InstallOut]
    history: list[EventOut]

    @classmethod
    def of(
        cls,
        record: DeviceRecord,
        installs: list[dict[str, Any]],
        history: list[dict[str, Any]],
    ) -> DeviceDetailOut:
        return cls(
            **DeviceOut.model_validate(record).model_dump(),
            installs=[InstallOut.of(row) for row in installs],
            history=[EventOut.of(row) for row in history],
        )


class CheckOut(BaseModel):
    name: str
    ok: bool
    detail: str


class ReleaseVerdictOut(BaseModel):
    build_id: str
    version: str
    hardware: str | None
    channel: str | None
    verdict: str
    rollout_id: int | None
    rollout_state: str | None
    cohort_bucket: int | None
    cohort_threshold: int | None
    checks: list[CheckOut]


class ExplanationOut(BaseModel):
    device_id: str
    build_id: str | None
    current_version: str | None
    version_source: str | None
    offered_build_id: str | None
    offered_version: str | None
    summary: str
    error: str | None
    not_newer: int
    releases: list[ReleaseVerdictOut]

    @classmethod
    def of(cls, device_id: str, explanation: Explanation | None) -> ExplanationOut:
        if explanation is None:  # a status report arrived, but never an announcement
            return cls(
                device_id=device_id,
                build_id=None,
                current_version=None,
                version_source=None,
                offered_build_id=None,
                offered_version=None,
                summary="no answer: the device has not announced its build yet",
                error="the device has not announced its build yet",
                not_newer=0,
                releases=[],
            )
        offered = explanation.offered
        return cls(
            device_id=device_id,
            build_id=explanation.device.build_id,
            current_version=explanation.current_version,
            version_source=explanation.version_source,
            offered_build_id=offered.build_id if offered else None,
            offered_version=offered.version if offered else None,
            summary=explanation.summary,
            error=explanation.error,
            not_newer=explanation.not_newer,
            releases=[
                ReleaseVerdictOut(
                    build_id=v.release.build_id,
                    version=v.release.version,
                    hardware=v.release.hardware,
                    channel=v.release.channel,
                    verdict=v.verdict.value,
                    rollout_id=v.rollout.rollout_id if v.rollout else None,
                    rollout_state=v.rollout.state.value if v.rollout else None,
                    cohort_bucket=v.cohort.bucket if v.cohort else None,
                    cohort_threshold=v.cohort.threshold if v.cohort else None,
                    checks=[CheckOut(name=c.name, ok=c.ok, detail=c.detail) for c in v.checks],
                )
                for v in explanation.verdicts
            ],
        )


class RolloutCreate(BaseModel):
    """A staged rollout as an admin asks for it (``POST /admin/api/rollouts``)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "build_id": "build-1002",
                    "stages": [1, 10, 50, 100],
                    "channel": "stable",
                    "failure_threshold_percent": 5,
                    "failure_min_count": 3,
                    "auto_advance_seconds": 3600,
                }
            ]
        },
    )

    build_id: BuildId
    stages: list[float] = Field(min_length=1, max_length=20)
    channel: Channel | None = None
    hardware: HardwareId | None = None
    device_ids: list[DeviceId] | None = Field(default=None, max_length=MAX_ROLLOUT_DEVICE_IDS)
    failure_threshold_percent: float = Field(default=10.0, ge=0, le=100)
    failure_min_count: int = Field(default=5, ge=1, le=1_000_000)
    auto_advance_seconds: int | None = Field(default=None, ge=1, le=366 * 24 * 3600)

    @classmethod
    def parse(cls, data: dict[str, Any]) -> RolloutCreate:
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise InvalidInput(describe_validation_error(e)) from e

    def to_spec(self) -> RolloutSpec:
        return RolloutSpec(
            build_id=self.build_id,
            stages=tuple(validate_stages(self.stages)),
            channel=self.channel,
            hardware=self.hardware,
            device_ids=tuple(sorted(set(self.device_ids))) if self.device_ids is not None else None,
            failure_threshold_percent=self.failure_threshold_percent,
            failure_min_count=self.failure_min_count,
            auto_advance_seconds=self.auto_advance_seconds,
        )


class RolloutActionBody(BaseModel):
    """Optional body of a rollout action: a reason (pause, abort) and the stage the caller
    saw (the action is refused with 409 if the rollout has moved on since)."""

    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, StringConstraints(min_length=1, max_length=500)] | None = None
    expected_stage_index: int | None = Field(default=None, ge=0)
