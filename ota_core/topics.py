"""MQTT topics as value objects.

All topics live under one prefix (``ota/v1`` by default)::

    {prefix}/devices/{device_id}/announce   device → bridge
    {prefix}/devices/{device_id}/status     device → bridge
    {prefix}/devices/{device_id}/offer      bridge → device

``device_id`` is validated before it becomes part of a topic, so a device can
never smuggle ``+``, ``#`` or ``/`` into a filter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from ota_core.errors import InvalidInput
from ota_core.identifiers import check_device_id

DEFAULT_PREFIX = "ota/v1"
_PREFIX_RE = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")


class TopicKind(StrEnum):
    ANNOUNCE = "announce"
    STATUS = "status"
    OFFER = "offer"


@dataclass(frozen=True, slots=True)
class DeviceTopic:
    """One device's topic of one kind; ``str(topic)`` is the wire form."""

    prefix: str
    device_id: str
    kind: TopicKind

    def __str__(self) -> str:
        return f"{self.prefix}/devices/{self.device_id}/{self.kind.value}"


@dataclass(frozen=True, slots=True)
class TopicScheme:
    """Builds and parses the topics of one deployment (one prefix)."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not _PREFIX_RE.fullmatch(self.prefix):
            raise InvalidInput(
                f"topic prefix {self.prefix!r} must be plain levels with no wildcards"
            )

    def topic(self, device_id: str, kind: TopicKind) -> DeviceTopic:
        return DeviceTopic(self.prefix, check_device_id(device_id), kind)

    def announce(self, device_id: str) -> DeviceTopic:
        return self.topic(device_id, TopicKind.ANNOUNCE)

    def status(self, device_id: str) -> DeviceTopic:
        return self.topic(device_id, TopicKind.STATUS)

    def offer(self, device_id: str) -> DeviceTopic:
        return self.topic(device_id, TopicKind.OFFER)

    def filter(self, kind: TopicKind) -> str:
        """Subscription filter for ``kind`` from every device."""
        return f"{self.prefix}/devices/+/{kind.value}"

    def parse(self, topic: str) -> DeviceTopic:
        """Read a concrete topic; raise InvalidDeviceId or InvalidInput when it is not ours."""
        head = f"{self.prefix}/devices/"
        if not topic.startswith(head):
            raise InvalidInput(f"topic {topic!r} is not under {head}")
        rest = topic[len(head) :]
        device_id, sep, kind = rest.rpartition("/")
        if not sep:
            raise InvalidInput(f"topic {topic!r} has no message kind")
        try:
            parsed_kind = TopicKind(kind)
        except ValueError as e:
            raise InvalidInput(f"topic {topic!r}: unknown message kind {kind!r}") from e
        check_device_id(device_id)
        return DeviceTopic(self.prefix, device_id, parsed_kind)
