"""Validated identifier types shared by every model.

Device ids, build ids, hardware ids and channels end up in MQTT topics, file
names and database keys, so they are restricted to a small safe alphabet: no
``/``, ``+``, ``#`` or NUL can ever reach a topic filter or a path.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, StringConstraints

from ota_core.errors import InvalidDeviceId, InvalidFilename, InvalidVersion
from ota_core.versions import parse_version

ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
_ID_RE = re.compile(ID_PATTERN)
# Package file names: a plain base name, starting with an alphanumeric (so no
# ".", ".." or hidden files), at most 128 characters.
FILENAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$"
_FILENAME_RE = re.compile(FILENAME_PATTERN)


def check_device_id(value: str) -> str:
    if not _ID_RE.fullmatch(value):
        raise InvalidDeviceId(
            "device_id must be 1-64 characters of letters, digits, '.', '_' or '-'"
        )
    return value


def check_filename(value: str) -> str:
    if not _FILENAME_RE.fullmatch(value) or ".." in value:
        raise InvalidFilename(
            "filename must be a plain name of 1-128 characters (letters, digits, '._+-'), "
            "starting with a letter or digit; no paths"
        )
    return value


def _check_version(value: str) -> str:
    # Inside pydantic a validator must raise ValueError to become a field error.
    try:
        parse_version(value)
    except InvalidVersion as e:
        raise ValueError(e.detail) from e
    return value


def _check_filename_field(value: str) -> str:
    try:
        return check_filename(value)
    except InvalidFilename as e:
        raise ValueError(e.detail) from e


Identifier = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
DeviceId = Identifier
BuildId = Identifier
HardwareId = Identifier
Channel = Identifier
Filename = Annotated[
    str, StringConstraints(pattern=FILENAME_PATTERN), AfterValidator(_check_filename_field)
]
VersionStr = Annotated[
    str, StringConstraints(min_length=1, max_length=64), AfterValidator(_check_version)
]
RequestId = Annotated[str, StringConstraints(pattern=r"^[\x21-\x7e]{1,128}$")]
