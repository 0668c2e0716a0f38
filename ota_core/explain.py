"""Why a device is (or is not) offered each release: the policy, spelled out (pure, no I/O).

:func:`explain` walks the catalog exactly as :func:`ota_core.policy.decide` does
and records, for every release newer than the device's current version, each
rule the release passes or fails: hardware, channel, and — when the release is
under a staged rollout — the rollout's state, its audience (channel, hardware,
device list) and the device's cohort bucket against the reached stage's
threshold. The release it concludes would be offered is always the one
``decide`` picks (the unit tests hold it to that); this module only adds the why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from ota_core.catalog import Catalog
from ota_core.errors import OtaError
from ota_core.models import DeviceFacts, Release
from ota_core.policy import current_version
from ota_core.rollouts import BUCKETS, Rollout, cohort_bucket
from ota_core.versions import parse_version

__all__ = ["Check", "Explanation", "ReleaseVerdict", "Verdict", "explain"]


class Verdict(StrEnum):
    OFFERED = "offered"  # the release the device gets now
    ELIGIBLE = "eligible"  # passes every rule, but a newer eligible release wins
    BLOCKED = "blocked"  # some rule keeps it from this device


@dataclass(frozen=True, slots=True)
class Check:
    """One rule applied to one (release, device): its name, outcome and a readable why."""

    name: str  # hardware | channel | rollout-state | rollout-audience | rollout-cohort
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class CohortPosition:
    """Where the device sits in a rollout: in the reached cohort when bucket < threshold."""

    bucket: int
    threshold: int
    percent: float
    buckets: int = BUCKETS

    @property
    def inside(self) -> bool:
        return self.bucket < self.threshold

    @property
    def needed_percent(self) -> float:
        """The smallest stage percentage that would include this device."""
        return 100.0 * (self.bucket + 1) / self.buckets


@dataclass(frozen=True, slots=True)
class ReleaseVerdict:
    release: Release
    verdict: Verdict
    checks: tuple[Check, ...]
    rollout: Rollout | None = None
    cohort: CohortPosition | None = None

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.ok)


@dataclass(frozen=True, slots=True)
class Explanation:
    device: DeviceFacts
    current_version: str | None
    #: "catalog" (the version of its build), "announced" (its own word), or None (unknown)
    version_source: str | None
    offered: Release | None
    verdicts: tuple[ReleaseVerdict, ...] = field(default=())
    not_newer: int = 0  # releases at or below the current version: never offered
    error: str | None = None  # the policy cannot answer (unknown build, bad version)

    @property
    def summary(self) -> str:
        if self.error is not None:
            return f"no answer: {self.error}"
        if self.offered is not None:
            return (
                f"would be offered {self.offered.build_id} ({self.offered.version}), "
                f"up from {self.current_version}"
            )
        if not self.verdicts:
            return f"up to date: no release is newer than {self.current_version}"
        blocked = len(self.verdicts)
        return (
            f"up to date at {self.current_version}: {blocked} newer "
            f"release{'' if blocked == 1 else 's'} held back (see why below)"
        )


def _target_check(name: str, wanted: str | None, actual: str | None, what: str) -> Check:
    if wanted is None:
        return Check(name, True, f"{what}: release is for any {name}")
    if actual is None:
        return Check(
            name, False, f"{what}: release is for {wanted!r}; device did not say its {name}"
        )
    if wanted == actual:
        return Check(name, True, f"{what}: {actual!r} matches")
    return Check(name, False, f"{what}: release is for {wanted!r}, device is {actual!r}")


def _rollout_checks(
    rollout: Rollout, device: DeviceFacts
) -> tuple[list[Check], CohortPosition]:
    checks: list[Check] = []
    label = f"rollout {rollout.rollout_id}"
    if rollout.offers_allowed:
        checks.append(Check("rollout-state", True, f"{label} is {rollout.state.value}"))
    else:
        why = f": {rollout.reason}" if rollout.reason else ""
        checks.append(
            Check(
                "rollout-state",
                False,
                f"{label} is {rollout.state.value}{why}; it hands out no new offers",
            )
        )
    if rollout.device_ids is not None and device.device_id not in rollout.device_ids:
        checks.append(
            Check("rollout-audience", False, f"{label} targets a device list without this device")
        )
    elif rollout.channel is not None and device.channel != rollout.channel:
        checks.append(
            Check(
                "rollout-audience",
                False,
                f"{label} targets channel {rollout.channel!r}, device is on {device.channel!r}",
            )
        )
    elif rollout.hardware is not None and device.hardware != rollout.hardware:
        checks.append(
            Check(
                "rollout-audience",
                False,
                f"{label} targets hardware {rollout.hardware!r}, device is {device.hardware!r}",
            )
        )
    else:
        checks.append(Check("rollout-audience", True, f"device is in {label}'s audience"))
    # The same arithmetic as ota_core.rollouts.in_cohort, kept visible for the operator.
    position = CohortPosition(
        bucket=cohort_bucket(rollout.build_id, device.device_id),
        threshold=round(rollout.percent * BUCKETS / 100),
        percent=rollout.percent,
    )
    stage = f"stage {rollout.stage_index + 1} of {len(rollout.stages)} ({rollout.percent:g}%)"
    if position.inside:
        detail = (
            f"bucket {position.bucket} < {position.threshold}: in the cohort reached at {stage}"
        )
    else:
        detail = (
            f"bucket {position.bucket} ≥ {position.threshold}: outside the cohort of {stage}; "
            f"joins once a stage reaches {position.needed_percent:.2f}%"
        )
    checks.append(Check("rollout-cohort", position.inside, detail))
    return checks, position


def _verdict(catalog: Catalog, release: Release, device: DeviceFacts) -> ReleaseVerdict:
    checks = [
        _target_check("hardware", release.hardware, device.hardware, "hardware"),
        _target_check("channel", release.channel, device.channel, "channel"),
    ]
    rollout = catalog.rollouts.by_build.get(release.build_id)
    position = None
    if rollout is None:
        checks.append(
            Check("rollout", True, "no staged rollout: available to every eligible device")
        )
    else:
        more, position = _rollout_checks(rollout, device)
        checks.extend(more)
    verdict = Verdict.ELIGIBLE if all(c.ok for c in checks) else Verdict.BLOCKED
    return ReleaseVerdict(release, verdict, tuple(checks), rollout, position)


def explain(catalog: Catalog, device: DeviceFacts) -> Explanation:
    """Which release ``device`` would be offered from ``catalog`` now, and why each newer
    release is or is not (newest first)."""
    known = catalog.by_build.get(device.build_id)
    source = "catalog" if known is not None else "announced"
    try:
        current = current_version(catalog, device)
        floor = parse_version(current)
    except OtaError as e:
        return Explanation(device, None, None, None, error=e.detail)
    verdicts: list[ReleaseVerdict] = []
    offered: Release | None = None
    not_newer = 0
    for release in catalog.releases:  # newest first, as decide() walks them
        if parse_version(release.version) <= floor:
            not_newer += 1
            continue
        verdict = _verdict(catalog, release, device)
        if verdict.verdict is Verdict.ELIGIBLE and offered is None:
            offered = release
            verdict = ReleaseVerdict(
                release, Verdict.OFFERED, verdict.checks, verdict.rollout, verdict.cohort
            )
        verdicts.append(verdict)
    return Explanation(device, current, source, offered, tuple(verdicts), not_newer)
