"""Firmware version order.

Versions follow PEP 440 ordering through ``packaging`` (``1.10.0`` > ``1.9.0``,
``1.2.0rc1`` < ``1.2.0``); SemVer-looking strings such as ``1.2.0-rc.1`` are
accepted and normalised by it. A string that is not a version is an
:class:`~ota_core.errors.InvalidVersion`, never silently ordered as text.
"""

from __future__ import annotations

from functools import lru_cache

from packaging.version import InvalidVersion as _PackagingInvalidVersion
from packaging.version import Version

from ota_core.errors import InvalidVersion

MAX_VERSION_LENGTH = 64


@lru_cache(maxsize=4096)
def parse_version(text: str) -> Version:
    """Parse ``text`` as a firmware version, or raise :class:`InvalidVersion`."""
    if not text or len(text) > MAX_VERSION_LENGTH:
        raise InvalidVersion(f"version must be 1-{MAX_VERSION_LENGTH} characters")
    try:
        return Version(text)
    except _PackagingInvalidVersion as e:
        raise InvalidVersion(f"not a version: {text!r}") from e


def is_newer(candidate: str, current: str) -> bool:
    """True when ``candidate`` sorts strictly after ``current``."""
    return parse_version(candidate) > parse_version(current)
