"""Which release a device is offered (pure, no I/O).

Rules, in order:

1. The device's current version is the version of its ``build_id`` when the
   catalog knows that build, else the version it announced. Neither → the build
   is unknown (:class:`~ota_core.errors.UnknownBuild`).
2. A candidate is a release whose version is strictly newer than the current
   one and whose ``hardware`` and ``channel``, when the release names them,
   equal the device's. A release that names a hardware never goes to a device
   that did not say what hardware it is.
3. A release under a staged rollout is a candidate only for devices in the
   cohorts the rollout has reached (:mod:`ota_core.rollouts`).
4. The newest candidate (version order, then release counter) is offered; with
   no candidate the device is up to date. A downgrade is never offered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ota_core.catalog import Catalog
from ota_core.errors import UnknownBuild
from ota_core.models import DeviceFacts, Release
from ota_core.versions import parse_version

__all__ = ["Decision", "DeviceFacts", "current_version", "decide", "fits"]


@dataclass(frozen=True, slots=True)
class Decision:
    current_version: str
    release: Release | None  # None: up to date


def fits(release: Release, device: DeviceFacts) -> bool:
    """True when ``release`` is built for this device's hardware and channel."""
    if release.hardware is not None and release.hardware != device.hardware:
        return False
    return release.channel is None or release.channel == device.channel


def current_version(catalog: Catalog, device: DeviceFacts) -> str:
    known = catalog.by_build.get(device.build_id)
    if known is not None:
        return known.version
    if device.version is not None:
        return device.version
    raise UnknownBuild(
        f"build {device.build_id!r} is not in the catalog and the announcement has no version"
    )


def decide(
    catalog: Catalog,
    device: DeviceFacts,
    allowed: Callable[[Release, DeviceFacts], bool] | None = None,
) -> Decision:
    """Pick the release to offer ``device``; ``allowed`` lets rollouts narrow the choice."""
    current = current_version(catalog, device)
    floor = parse_version(current)
    for release in catalog.releases:  # newest first
        if parse_version(release.version) <= floor:
            break
        if (
            fits(release, device)
            and catalog.rollouts.allows(release, device)
            and (allowed is None or allowed(release, device))
        ):
            return Decision(current, release)
    return Decision(current, None)
