"""Test-side helpers for the bridge: a device speaking raw bytes, releases, a running bridge."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from broker_bridge.bridge import Bridge
from ota_core.models import ErrorReply, Offer, UpdateOffer, UpToDate, parse_offer
from ota_core.releases import ReleaseRequest
from ota_core.services import Services
from ota_core.settings import Settings
from tests.support import MqttProbe

WAIT = 20.0  # generous: only ever a limit on waiting, never an assertion on speed


def unique_prefix() -> str:
    """A topic prefix of its own, so tests sharing one broker never see each other."""
    return f"t{uuid.uuid4().hex[:10]}/ota/v1"


class FakeDevice:
    """One device's side of the contract over its own MQTT connection.

    Publishes raw bytes, so malformed input really crosses the broker. Subscribed
    to its own offer topic only: every message it receives is an answer to it.
    """

    def __init__(
        self,
        url: str,
        settings: Settings,
        device_id: str,
        *,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.device_id = device_id
        self.settings = settings
        self.probe = MqttProbe(url, username=username, password=password)
        self.probe.subscribe(self.offer_topic)

    @property
    def offer_topic(self) -> str:
        return str(self.settings.topics.offer(self.device_id))

    @property
    def announce_topic(self) -> str:
        return str(self.settings.topics.announce(self.device_id))

    @property
    def status_topic(self) -> str:
        return str(self.settings.topics.status(self.device_id))

    def publish(self, topic: str, payload: bytes) -> None:
        self.probe.publish(topic, payload)

    def next_offer(self) -> bytes:
        message = self.probe.expect(WAIT)
        assert message.topic == self.offer_topic
        return bytes(message.payload)

    def has_pending(self) -> bool:
        return not self.probe.messages.empty()

    def announce_raw(self, payload: bytes) -> Offer:
        self.publish(self.announce_topic, payload)
        return parse_offer(self.next_offer())

    def announce(self, **fields: str) -> Offer:
        return self.announce_raw(json.dumps(fields).encode())

    def report(self, state: str, build_id: str, **extra: str) -> None:
        self.publish(
            self.status_topic, json.dumps({"state": state, "build_id": build_id, **extra}).encode()
        )

    def expect_update(self, **fields: str) -> UpdateOffer:
        offer = self.announce(**fields)
        assert isinstance(offer, UpdateOffer), offer
        return offer

    def expect_up_to_date(self, **fields: str) -> UpToDate:
        offer = self.announce(**fields)
        assert isinstance(offer, UpToDate), offer
        return offer

    def expect_error_raw(self, payload: bytes) -> ErrorReply:
        offer = self.announce_raw(payload)
        assert isinstance(offer, ErrorReply), offer
        return offer

    def close(self) -> None:
        self.probe.close()


def add_release(
    services: Services, build_id: str, version: str, content: bytes | None = None, **extra: str
) -> None:
    """Publish a release the way the admin side does: an upload through ReleaseService."""
    data = content if content is not None else f"firmware {build_id}".encode() * 100
    services.releases.add_upload(
        ReleaseRequest(build_id=build_id, version=version, filename=f"fw-{build_id}.bin", **extra),
        [data],
        max_bytes=10 * 1024 * 1024,
    )


@contextmanager
def running_bridge(settings: Settings) -> Iterator[tuple[Bridge, Services]]:
    """A started, subscribed bridge on ``settings``; stopped (and closed) afterwards."""
    services = Services.from_settings(settings)
    bridge = Bridge(settings, services)
    try:
        bridge.start()
        assert bridge.wait_ready(WAIT), f"no subscription on {settings.effective_broker_url}"
        yield bridge, services
    finally:
        bridge.stop()
        services.close()
