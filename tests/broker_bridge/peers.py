"""Test-side helpers for the bridge: a device speaking raw bytes, releases, a running bridge."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from broker_bridge.bridge import Bridge
from ota_core.models import ErrorReply, Offer, UpdateOffer, UpToDate, parse_offer
from ota_core.releases import ReleaseRequest
from ota_core.services import Services
from ota_core.settings import Settings
from ota_core.store.rollouts import RolloutSpec
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


def bridge_settings(ota_dirs: Any, url: str, protocol: str = "5", **extra: Any) -> Settings:
    """Settings for a bridge of the test's own: own topic prefix and client id, brisk polls."""
    values: dict[str, Any] = {
        "broker_url": url,
        "mqtt_protocol": protocol,
        "topic_prefix": unique_prefix(),
        "mqtt_client_id": f"bridge-{uuid.uuid4().hex[:10]}",
        "catalog_poll_seconds": 0.1,
        # Tests send bursts from one device id on purpose; the limiter has its own tests.
        "device_rate_limit": 0,
    }
    settings: Settings = ota_dirs.settings(**{**values, **extra})
    return settings


def add_release(
    services: Services,
    build_id: str,
    version: str,
    content: bytes | None = None,
    rollout: RolloutSpec | None = None,
    **extra: str,
) -> None:
    """Publish a release the way the admin side does: an upload through ReleaseService
    (staged from the start, in the same transaction, with ``rollout``)."""
    data = content if content is not None else f"firmware {build_id}".encode() * 100
    services.releases.add_upload(
        ReleaseRequest(build_id=build_id, version=version, filename=f"fw-{build_id}.bin", **extra),
        [data],
        max_bytes=10 * 1024 * 1024,
        rollout=rollout,
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


class Fleet:
    """Many device ids over one MQTT connection, seeing every offer under the prefix.

    Anonymous Mosquitto has no ACL, so one connection may speak for any device id
    (the one-connection-many-ids mode of a simulator). Offers are kept per device,
    in arrival order, as parsed JSON.
    """

    def __init__(self, url: str, settings: Settings) -> None:
        self.settings = settings
        self.probe = MqttProbe(url)
        self.probe.subscribe(f"{settings.topic_prefix}/devices/+/offer")
        self.offers: dict[str, list[dict[str, object]]] = {}

    def announce(self, device_id: str, wait_ack: bool = True, **fields: object) -> None:
        topic = str(self.settings.topics.announce(device_id))
        payload = json.dumps(fields).encode()
        if wait_ack:
            self.probe.publish(topic, payload)
        else:
            self.probe.client.publish(topic, payload, qos=1)

    def report(self, device_id: str, state: str, build_id: str) -> None:
        topic = str(self.settings.topics.status(device_id))
        self.probe.publish(topic, json.dumps({"state": state, "build_id": build_id}).encode())

    def receive(self, timeout: float = WAIT) -> tuple[str, dict[str, object]]:
        message = self.probe.expect(timeout)
        device_id = message.topic.split("/")[-2]
        offer: dict[str, object] = json.loads(message.payload)
        self.offers.setdefault(device_id, []).append(offer)
        return device_id, offer

    def register(self, devices: dict[str, dict[str, object]]) -> dict[str, dict[str, object]]:
        """Announce each device once (request_id "reg") and wait for every answer."""
        for device_id, fields in devices.items():
            self.announce(device_id, wait_ack=False, request_id="reg", **fields)
        answers: dict[str, dict[str, object]] = {}
        while len(answers) < len(devices):
            device_id, offer = self.receive()
            if offer.get("request_id") == "reg":
                answers[device_id] = offer
        return answers

    def drain_until_answer(self, device_id: str, request_id: str, **fields: object) -> None:
        """Announce as ``device_id`` and take in every message until its answer arrives.

        The bridge publishes in order on one connection, so whatever it published
        before this answer (pushes included) has arrived by then.
        """
        self.announce(device_id, request_id=request_id, **fields)
        while True:
            got, offer = self.receive()
            if got == device_id and offer.get("request_id") == request_id:
                return

    def pushes(self) -> dict[str, list[str]]:
        """Per device, the builds pushed to it (offers without a request id)."""
        out: dict[str, list[str]] = {}
        for device_id, offers in self.offers.items():
            for offer in offers:
                if offer.get("request_id") is None and offer["status"] == "update-available":
                    out.setdefault(device_id, []).append(str(offer["build_id"]))
        return out

    def close(self) -> None:
        self.probe.close()
