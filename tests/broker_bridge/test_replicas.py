"""Bridges in one replicas group split announcements through an MQTT 5 shared subscription.

Real Mosquitto, two in-process bridges with their own client ids and one shared
database. Every announcement must be answered exactly once, and both replicas
must have answered some (Mosquitto deals a shared subscription's messages out
round-robin by default; the test only asserts each got a share).
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

import pytest

from broker_bridge.bridge import Bridge
from ota_core.errors import InvalidInput
from ota_core.settings import Settings
from tests.broker_bridge.peers import WAIT, Fleet, add_release, bridge_settings, running_bridge
from tests.support import MosquittoServer

ANNOUNCEMENTS = 200


def test_two_bridges_in_a_group_split_announcements(
    ota_dirs: Any, mosquitto: MosquittoServer
) -> None:
    group = f"g{uuid.uuid4().hex[:8]}"
    first = bridge_settings(ota_dirs, mosquitto.url, "5", replicas_group=group)
    second = first.model_copy(update={"mqtt_client_id": f"bridge-{uuid.uuid4().hex[:10]}"})
    with contextlib.ExitStack() as stack:
        bridge_a, services = stack.enter_context(running_bridge(first))
        bridge_b, _ = stack.enter_context(running_bridge(second))
        add_release(services, "build-1", "1.0.0")
        add_release(services, "build-2", "1.1.0")
        fleet = Fleet(mosquitto.url, first)
        stack.callback(fleet.probe.close)
        for n in range(ANNOUNCEMENTS):
            fleet.announce(
                f"dev-{n}", wait_ack=False,
                build_id="build-1", hardware="board-a", channel="stable", request_id=f"r-{n}",
            )
        answers: dict[str, list[dict[str, object]]] = {}
        while len(answers) < ANNOUNCEMENTS:
            device_id, offer = fleet.receive(WAIT)
            answers.setdefault(device_id, []).append(offer)
        # Anything still on its way would be a second answer: wait for both
        # bridges to be idle, then take what is left in the queue.
        for bridge in (bridge_a, bridge_b):
            assert bridge.flush_registry(WAIT)
        while not fleet.probe.messages.empty():
            device_id, offer = fleet.receive(WAIT)
            answers[device_id].append(offer)

    assert all(len(offers) == 1 for offers in answers.values()), {
        d: len(o) for d, o in answers.items() if len(o) != 1
    }
    assert all(
        offers[0]["request_id"] == f"r-{d.removeprefix('dev-')}" for d, offers in answers.items()
    )
    handled_a = bridge_a.stats.announcements
    handled_b = bridge_b.stats.announcements
    assert handled_a + handled_b == ANNOUNCEMENTS
    assert handled_a > 0 and handled_b > 0, (handled_a, handled_b)
    assert answers["dev-0"][0]["status"] == "update-available"


def test_a_group_needs_mqtt5(ota_dirs: Any, mosquitto: MosquittoServer) -> None:
    from ota_core.services import Services

    settings = bridge_settings(ota_dirs, mosquitto.url, "3.1.1", replicas_group="g")
    services = Services.from_settings(settings)
    try:
        with pytest.raises(InvalidInput, match="MQTT 5"):
            Bridge(settings, services)
    finally:
        services.close()


@pytest.mark.parametrize("name", ["a/b", "a+", "#"])
def test_a_group_name_is_one_topic_level(ota_dirs: Any, name: str) -> None:
    with pytest.raises(ValueError, match="one topic level"):
        Settings(replicas_group=name)
