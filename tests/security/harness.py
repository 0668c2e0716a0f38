"""A locked-down broker with a real bridge and real devices, for the security tests.

Everything is real: Mosquitto runs the repo's mosquitto.conf and mosquitto.acl as shipped
(``secure_mosquitto``/``tls_mosquitto`` fixtures), the bridge is
:class:`broker_bridge.bridge.Bridge` logged in as ``ota-bridge`` with sealed offers (an
offer key exists), and devices are paho clients with their own credentials.

"Never arrives" is proven without sleeping: MQTT keeps the order of messages from one
publisher, and Mosquitto drops a refused message when it arrives. So after an attack,
a legitimate message sent *later* that is answered shows the attack was already dropped:
anything it had let through would have arrived (and been answered) first.
"""

from __future__ import annotations

import json
import ssl
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paho.mqtt.enums import MQTTProtocolVersion

from broker_bridge.bridge import Bridge
from ota_core.keyfiles import ensure_offer_key, load_signer
from ota_core.models import Offer, UpdateOffer, parse_offer
from ota_core.mqtt_users import BRIDGE_USER
from ota_core.services import Services
from ota_core.settings import Settings
from tests.broker_bridge.peers import add_release, running_bridge
from tests.support import MosquittoServer, MqttProbe, OtaDirs

WAIT = 20.0  # generous: only ever a limit on waiting, never an assertion on speed
OLD_BUILD, OLD_VERSION = "build-100", "1.0.0"
NEW_BUILD, NEW_VERSION = "build-200", "2.0.0"


def announcement(request_id: str, build_id: str = OLD_BUILD, version: str = OLD_VERSION) -> bytes:
    return json.dumps(
        {"build_id": build_id, "version": version, "request_id": request_id}
    ).encode()


def fresh_request_id(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


def device_tls_context(ca_dir: Path, device_id: str | None) -> ssl.SSLContext:
    """Trust the dev CA; present ``devices/<id>.crt`` when a device id is given."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_dir / "ca.crt"))
    if device_id is not None:
        context.load_cert_chain(
            ca_dir / "devices" / f"{device_id}.crt", ca_dir / "devices" / f"{device_id}.key"
        )
    return context


@dataclass
class Device:
    """One device's MQTT connection (password or certificate), subscribed to ``listen``."""

    device_id: str
    probe: MqttProbe
    topics: Any
    received: list[Offer] = field(default_factory=list)

    def announce_topic(self, device_id: str | None = None) -> str:
        return str(self.topics.announce(device_id or self.device_id))

    def offer_topic(self, device_id: str | None = None) -> str:
        return str(self.topics.offer(device_id or self.device_id))

    def publish(self, topic: str, payload: bytes) -> None:
        """QoS 1, acknowledged by the broker (a refused one is acknowledged too: 3.1.1 has
        no way to say no, and Mosquitto drops it)."""
        self.probe.publish(topic, payload)

    def next_message(self) -> tuple[str, bytes]:
        message = self.probe.expect(WAIT)
        return message.topic, bytes(message.payload)

    def announce(self, request_id: str) -> Offer:
        """Announce as itself and return the answer; it must be the next message."""
        self.publish(self.announce_topic(), announcement(request_id))
        topic, payload = self.next_message()
        assert topic == self.offer_topic(), f"{self.device_id} got a message on {topic}"
        offer = parse_offer(payload)
        assert offer.device_id == self.device_id
        assert offer.request_id == request_id, (
            f"{self.device_id} expected the answer to {request_id}, got one to {offer.request_id}"
        )
        return offer

    def expect_update(self, request_id: str) -> UpdateOffer:
        offer = self.announce(request_id)
        assert isinstance(offer, UpdateOffer), offer
        assert offer.envelope is not None, "offers must be sealed (offer key present)"
        return offer

    def has_pending(self) -> bool:
        return not self.probe.messages.empty()

    def close(self) -> None:
        self.probe.close()


@dataclass
class SecureRig:
    broker: MosquittoServer
    settings: Settings
    bridge: Bridge
    services: Services
    devices: list[Device] = field(default_factory=list)

    def device(
        self,
        device_id: str,
        *,
        password: str | None = None,
        listen: str | Sequence[str] = (),
        protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv311,
        client_id: str | None = None,
    ) -> Device:
        """A device logged in with its password (default: the right one), subscribed to
        its own offer topic, or to the topic filter(s) in ``listen``."""
        probe = MqttProbe(
            self.broker.url,
            username=device_id,
            password=password or self.broker.credentials[device_id],
            protocol=protocol,
            client_id=client_id or device_id,
        )
        return self._add(Device(device_id, probe, self.settings.topics), listen)

    def _add(self, device: Device, listen: str | Sequence[str]) -> Device:
        self.devices.append(device)
        filters = [listen] if isinstance(listen, str) else list(listen)
        for topic in filters or [device.offer_topic()]:
            device.probe.subscribe(topic)
        return device

    def tls_device(
        self, device_id: str, ca_dir: Path, *, listen: str | Sequence[str] = ()
    ) -> Device:
        """A device logged in by its client certificate alone (no username or password);
        it sends a client id of its own choosing, which the broker replaces."""
        probe = MqttProbe(
            f"mqtts://{self.broker.host}:{self.broker.tls_port}",
            client_id=f"chosen-by-device-{uuid.uuid4().hex[:6]}",
            tls=device_tls_context(ca_dir, device_id),
        )
        return self._add(Device(device_id, probe, self.settings.topics), listen)

    def registry_has(self, device_id: str) -> bool:
        assert self.bridge.flush_registry(WAIT), "registry writes did not drain"
        return self.services.registry.get(device_id) is not None

    def close(self) -> None:
        for device in self.devices:
            device.close()


def bridge_settings(ota_dirs: OtaDirs, broker: MosquittoServer) -> Settings:
    """The bridge as deployed: default topic prefix (the ACL names it) and client id,
    logged in as ota-bridge."""
    return ota_dirs.settings(
        broker_url=broker.url,
        mqtt_username=BRIDGE_USER,
        mqtt_password=broker.credentials[BRIDGE_USER],
        catalog_poll_seconds=0.1,
    )


@contextmanager
def secure_rig(ota_dirs: OtaDirs, broker: MosquittoServer) -> Iterator[SecureRig]:
    ensure_offer_key(ota_dirs.keys_dir, load_signer(ota_dirs.keys_dir))
    settings = bridge_settings(ota_dirs, broker)
    with running_bridge(settings) as (bridge, services):
        add_release(services, NEW_BUILD, NEW_VERSION)
        _wait_for_release(services)
        rig = SecureRig(broker, settings, bridge, services)
        try:
            yield rig
        finally:
            rig.close()


def _wait_for_release(services: Services) -> None:
    deadline = time.monotonic() + WAIT
    while NEW_BUILD not in {r.build_id for r in services.catalog.refresh()}:
        assert time.monotonic() < deadline, "the release never reached the catalog"
        time.sleep(0.05)
