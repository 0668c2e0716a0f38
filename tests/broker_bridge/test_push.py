"""Push and rollouts end to end: real Mosquitto, a real bridge, the admin side on its own
database connection (as ``ota http`` in another process), real SQLite.

The fleet is simulated over one MQTT connection speaking for many device ids; it sees
every offer under the test's prefix. To know that a push pass is over and every offer
it published has arrived, a test waits for the bridge's pass at the admin's revision,
then announces a sentinel device: the bridge publishes in order, so its answer comes
after everything pushed before it. Nothing asserts on speed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from paho.mqtt.enums import MQTTProtocolVersion

from broker_bridge.bridge import Bridge
from ota_core.envelope import TrustedOfferKeys
from ota_core.keyfiles import ensure_offer_key, load_offer_signer, load_signer, load_verifier
from ota_core.models import UpdateOffer, parse_offer
from ota_core.rollouts import RolloutState, in_cohort
from ota_core.services import Services
from ota_core.settings import Settings
from ota_core.store.rollouts import RolloutSpec, RolloutStore
from ota_core.verify import OfferChecker
from tests.broker_bridge.peers import WAIT, Fleet, add_release, bridge_settings, running_bridge
from tests.support import MosquittoServer, MqttProbe


@pytest.fixture
def settings(ota_dirs: Any, mosquitto: MosquittoServer) -> Settings:
    return bridge_settings(ota_dirs, mosquitto.url, "5", rollout_check_seconds=0.2)


@pytest.fixture
def admin(settings: Settings) -> Iterator[Services]:
    """The admin side: its own Services, so its own database engine."""
    services = Services.from_settings(settings)
    yield services
    services.close()


@pytest.fixture
def fleet(mosquitto: MosquittoServer, settings: Settings) -> Iterator[Fleet]:
    fleet = Fleet(mosquitto.url, settings)
    yield fleet
    fleet.close()


def revision(admin: Services) -> int:
    return admin.releases.store.revision()


def pushed_through(bridge: Bridge, admin: Services, fleet: Fleet, tag: str) -> dict[str, list[str]]:
    """Wait until the bridge pushed for the admin's current revision; what was pushed so far."""
    assert bridge.pusher is not None
    assert bridge.pusher.wait_for_revision(revision(admin), WAIT), bridge.pusher.stats
    fleet.drain_until_answer("zz-sentinel", tag, build_id="zz", version="99.0.0")
    return fleet.pushes()


def test_a_new_release_is_pushed_to_known_eligible_devices_only(
    settings: Settings, admin: Services, fleet: Fleet
) -> None:
    ensure_offer_key(settings.keys_dir, load_signer(settings.keys_dir))
    with running_bridge(settings) as (bridge, _services):
        add_release(admin, "b1", "1.0.0")
        eligible = {"ok-1", "ok-2", "ok-3"}
        devices: dict[str, dict[str, object]] = {
            **{d: {"build_id": "b1", "channel": "stable", "hardware": "board-a"}
               for d in eligible},
            "other-channel": {"build_id": "b1", "channel": "beta", "hardware": "board-a"},
            "other-hardware": {"build_id": "b1", "channel": "stable", "hardware": "board-b"},
            "no-hardware": {"build_id": "b1", "channel": "stable"},
            "newer": {"build_id": "home", "version": "9.0.0", "channel": "stable",
                      "hardware": "board-a"},
            "unknown-build": {"build_id": "mystery", "channel": "stable", "hardware": "board-a"},
        }
        answers = fleet.register(devices)
        assert answers["unknown-build"]["error"] == "unknown-build"
        assert {d for d, a in answers.items() if a["status"] == "up-to-date"} == (
            set(devices) - {"unknown-build"}
        )
        assert bridge.flush_registry(WAIT)

        add_release(admin, "b2", "2.0.0", hardware="board-a", channel="stable")
        assert pushed_through(bridge, admin, fleet, "s1") == {d: ["b2"] for d in eligible}

        # A real offer the device verifies, sealed for it with no nonce (nobody asked).
        offer = parse_offer(json.dumps(fleet.offers["ok-1"][-1]).encode())
        assert isinstance(offer, UpdateOffer) and offer.request_id is None
        offer_key = load_offer_signer(settings.keys_dir)
        assert offer_key is not None
        checker = OfferChecker(
            load_verifier(settings.keys_dir / "public.pem"), "ok-1", "1.0.0",
            hardware="board-a", offer_keys=TrustedOfferKeys.pinned([offer_key.public_hex]),
        )
        assert checker.check(offer).build_id == "b2"
        assert json.loads(offer.envelope or "{}")["nonce"] is None

        # Recorded as offered, so the next catalog change pushes nothing again.
        installs = admin.registry.installs("ok-2")
        assert [(i["build_id"], i["state"]) for i in installs] == [("b2", "offered")]
        record = admin.registry.get("ok-2")
        assert record is not None and record.last_offered_build == "b2"
        assert [e["kind"] for e in admin.registry.history("ok-2")][:2] == ["offer", "announce"]
        add_release(admin, "b0", "0.5.0")  # an unrelated, older release: the revision moves
        assert pushed_through(bridge, admin, fleet, "s2") == {d: ["b2"] for d in eligible}


def test_rollout_pushes_exactly_the_reached_cohorts_and_pauses_on_failures(
    settings: Settings, admin: Services, fleet: Fleet
) -> None:
    rollouts = RolloutStore(admin.database)
    fleet_ids = [f"dev-{n:03d}" for n in range(200)]
    first = {d for d in fleet_ids if in_cohort("b2", d, 10.0)}
    second = {d for d in fleet_ids if in_cohort("b2", d, 50.0)}
    assert 5 <= len(first) < len(second) < len(fleet_ids)  # a meaningful split
    with running_bridge(settings) as (bridge, _):
        add_release(admin, "b1", "1.0.0")
        fleet.register({d: {"build_id": "b1", "channel": "stable"} for d in fleet_ids})
        assert bridge.flush_registry(WAIT)
        # Staged from the start: the release and its rollout in one transaction, so no
        # catalog revision ever offers b2 to the whole fleet.
        add_release(admin, "b2", "2.0.0", rollout=RolloutSpec(
            "b2", (10.0, 50.0, 100.0), failure_threshold_percent=20.0, failure_min_count=3,
        ))
        (rollout,) = rollouts.all()
        pushed = pushed_through(bridge, admin, fleet, "s1")
        assert pushed == {d: ["b2"] for d in first}

        rollouts.transition(rollout.rollout_id, lambda r: r.advance(time.time()))
        pushed = pushed_through(bridge, admin, fleet, "s2")
        assert pushed == {d: ["b2"] for d in second}  # the newly reached only, once each

        # Devices of the current stage report: 1 installed, 3 failed → 75% > 20%.
        reached = sorted(second - first)
        fleet.report(reached[0], "installed", "b2")
        for device_id in reached[1:4]:
            fleet.report(device_id, "failed", "b2")
        deadline = time.monotonic() + WAIT
        while rollouts.get(rollout.rollout_id).state is not RolloutState.PAUSED:
            assert time.monotonic() < deadline, rollouts.log(rollout.rollout_id)
            time.sleep(0.1)
        paused = rollouts.get(rollout.rollout_id)
        assert paused.stage_index == 1
        assert paused.reason is not None and "failure rate 75.0%" in paused.reason
        assert bridge.supervisor.transitions == 1

        # Paused: nobody new gets it, neither by push nor by asking.
        pushed = pushed_through(bridge, admin, fleet, "s3")
        assert pushed == {d: ["b2"] for d in second}
        outsider = next(d for d in fleet_ids if d not in second)
        fleet.drain_until_answer(outsider, "ask", build_id="b1", channel="stable")
        assert fleet.offers[outsider][-1]["status"] == "up-to-date"

        # Resumed and advanced by the admin: the rest of the fleet, once each.
        rollouts.transition(rollout.rollout_id, lambda r: r.resume(time.time()))
        rollouts.transition(rollout.rollout_id, lambda r: r.advance(time.time()))
        pushed = pushed_through(bridge, admin, fleet, "s4")
        assert pushed == {d: ["b2"] for d in fleet_ids}


def test_an_offline_device_with_a_persistent_session_gets_the_push_when_back(
    settings: Settings, admin: Services, mosquitto: MosquittoServer, fleet: Fleet
) -> None:
    client_id = f"persistent-{settings.mqtt_client_id}"
    offer_topic = str(settings.topics.offer("sleepy"))
    with running_bridge(settings) as (bridge, _):
        add_release(admin, "b1", "1.0.0")
        device = MqttProbe(mosquitto.url, client_id=client_id, clean_session=False)
        try:
            device.subscribe(offer_topic)
            device.publish(
                str(settings.topics.announce("sleepy")),
                b'{"build_id": "b1", "request_id": "hello"}',
            )
            assert json.loads(device.expect(WAIT).payload)["status"] == "up-to-date"
        finally:
            device.close()  # offline now; the broker keeps its session and subscription
        assert bridge.flush_registry(WAIT)

        add_release(admin, "b2", "2.0.0")
        assert pushed_through(bridge, admin, fleet, "s1") == {"sleepy": ["b2"]}

    # Back, after the bridge is gone even: the broker queued the offer for it.
    device = MqttProbe(mosquitto.url, client_id=client_id, clean_session=False)
    try:
        message = device.expect(WAIT)
        offer = json.loads(message.payload)
        assert message.topic == offer_topic
        assert (offer["status"], offer["build_id"], offer.get("request_id")) == (
            "update-available", "b2", None
        )
    finally:
        device.close()
        cleanup = MqttProbe(mosquitto.url, client_id=client_id, clean_session=True)
        cleanup.close()  # do not leave a persistent session on the shared broker


def test_pushes_are_paced(ota_dirs: Any, mosquitto: MosquittoServer) -> None:
    rate = 20.0
    settings = bridge_settings(ota_dirs, mosquitto.url, "5", push_rate=rate)
    fleet_ids = [f"p-{n:02d}" for n in range(40)]
    admin = Services.from_settings(settings)
    fleet = Fleet(mosquitto.url, settings)
    try:
        with running_bridge(settings) as (bridge, _):
            add_release(admin, "b1", "1.0.0")
            fleet.register({d: {"build_id": "b1"} for d in fleet_ids})
            assert bridge.flush_registry(WAIT)
            started = time.monotonic()  # before the release: the push cannot start earlier
            add_release(admin, "b2", "2.0.0")
            arrivals: list[float] = []
            while len(arrivals) < len(fleet_ids):
                _device, offer = fleet.receive()
                if offer.get("request_id") is None:
                    arrivals.append(time.monotonic() - started)
            assert bridge.pusher is not None
            burst = bridge.pusher._pacer.burst
            # Count, not time: by any moment, at most the burst plus the rate's worth.
            for count, elapsed in enumerate(arrivals, start=1):
                assert count <= burst + rate * elapsed + 1, (count, elapsed)
            assert bridge.pusher.stats.pushed == len(fleet_ids)
    finally:
        fleet.close()
        admin.close()


def test_two_bridges_push_each_offer_once(ota_dirs: Any, mosquitto: MosquittoServer) -> None:
    """Two bridges on one database see the same revision; the offered-row claim splits the
    pushes between them instead of doubling them (their answers are not under test here:
    without a shared subscription both would answer each announcement)."""
    settings = bridge_settings(ota_dirs, mosquitto.url, "5")
    twin = settings.model_copy(update={"mqtt_client_id": settings.mqtt_client_id + "-twin"})
    fleet_ids = [f"t-{n:03d}" for n in range(100)]
    admin = Services.from_settings(settings)
    fleet = Fleet(mosquitto.url, settings)
    try:
        with running_bridge(settings) as (one, _), running_bridge(twin) as (two, _):
            add_release(admin, "b1", "1.0.0")
            fleet.register({d: {"build_id": "b1"} for d in fleet_ids})
            assert one.flush_registry(WAIT) and two.flush_registry(WAIT)
            add_release(admin, "b2", "2.0.0")
            for bridge in (one, two):
                assert bridge.pusher is not None
                assert bridge.pusher.wait_for_revision(revision(admin), WAIT)
            # Both bridges answer the sentinel; each answer comes after that bridge's pushes
            # (unpaced, they may still be on their way when the pass is over).
            fleet.drain_until_answer("zz-sentinel", "s1", build_id="zz", version="99.0.0")
            while True:
                device_id, offer = fleet.receive()
                if device_id == "zz-sentinel" and offer.get("request_id") == "s1":
                    break
            assert one.pusher is not None and two.pusher is not None
            assert one.pusher.stats.pushed + two.pusher.stats.pushed == len(fleet_ids)
            assert fleet.pushes() == {d: ["b2"] for d in fleet_ids}
    finally:
        fleet.close()
        admin.close()


def test_mqtt_311_devices_get_pushes_too(ota_dirs: Any, mosquitto: MosquittoServer) -> None:
    settings = bridge_settings(ota_dirs, mosquitto.url, "3.1.1")
    admin = Services.from_settings(settings)
    device = MqttProbe(mosquitto.url, protocol=MQTTProtocolVersion.MQTTv311)
    try:
        with running_bridge(settings) as (bridge, _):
            add_release(admin, "b1", "1.0.0")
            device.subscribe(str(settings.topics.offer("d311")))
            device.publish(str(settings.topics.announce("d311")), b'{"build_id": "b1"}')
            assert json.loads(device.expect(WAIT).payload)["status"] == "up-to-date"
            assert bridge.flush_registry(WAIT)
            add_release(admin, "b2", "2.0.0")
            offer = json.loads(device.expect(WAIT).payload)
            assert (offer["status"], offer["build_id"]) == ("update-available", "b2")
    finally:
        device.close()
        admin.close()


def test_a_newer_release_during_a_push_restarts_it_from_the_newer_catalog(
    ota_dirs: Any, mosquitto: MosquittoServer
) -> None:
    rate = 20.0  # 100 devices: the pacer alone makes the first push last about 5 s
    settings = bridge_settings(ota_dirs, mosquitto.url, "5", push_rate=rate)
    fleet_ids = [f"n-{n:03d}" for n in range(100)]
    admin = Services.from_settings(settings)
    fleet = Fleet(mosquitto.url, settings)
    try:
        with running_bridge(settings) as (bridge, _):
            add_release(admin, "b1", "1.0.0")
            fleet.register({d: {"build_id": "b1"} for d in fleet_ids})
            assert bridge.flush_registry(WAIT)
            add_release(admin, "b2", "2.0.0")
            while fleet.receive()[1].get("request_id") is not None:
                pass  # until the first push of b2 is out
            add_release(admin, "b3", "3.0.0")
            pushed = pushed_through(bridge, admin, fleet, "s1")
            assert bridge.pusher is not None and bridge.pusher.stats.restarts >= 1
            # Every device gets the newest exactly once; b2 at most once and never after b3.
            assert set(pushed) == set(fleet_ids)
            assert all(builds in (["b3"], ["b2", "b3"]) for builds in pushed.values()), pushed
            assert sum(builds == ["b3"] for builds in pushed.values()) > len(fleet_ids) // 2
    finally:
        fleet.close()
        admin.close()


def test_a_release_published_while_no_bridge_ran_is_pushed_when_one_starts(
    settings: Settings, admin: Services, fleet: Fleet
) -> None:
    with running_bridge(settings) as (bridge, _):
        add_release(admin, "b1", "1.0.0")
        fleet.register({d: {"build_id": "b1"} for d in ("w-1", "w-2")})
        assert bridge.flush_registry(WAIT)
    add_release(admin, "b2", "2.0.0")  # no bridge running: nobody sees the revision move
    with running_bridge(settings) as (bridge, _):
        assert pushed_through(bridge, admin, fleet, "s1") == {"w-1": ["b2"], "w-2": ["b2"]}


# -- the push worker on its own: offers built from a template, backlog, pacing settings --


def _known_fleet(admin: Services, device_ids: list[str], build_id: str = "b1") -> None:
    """Devices known to the registry, recorded the way the bridge records announcements."""
    from datetime import UTC, datetime

    from ota_core.models import Announcement
    from ota_core.store.devices import AnnouncementSeen

    seen = Announcement(build_id=build_id, version="1.0.0")
    admin.registry.apply([AnnouncementSeen(d, seen, None, datetime.now(UTC)) for d in device_ids])


def test_unpaced_push_stays_within_the_backlog_of_unacknowledged_offers(
    settings: Settings, admin: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pusher publishes without waiting for PUBACKs, but never more than
    MAX_PUSH_BACKLOG ahead of them; here the 'broker' acknowledges slowly."""
    import threading

    import broker_bridge.push as push_module
    from broker_bridge.push import Pusher

    monkeypatch.setattr(push_module, "MAX_PUSH_BACKLOG", 7)
    add_release(admin, "b1", "1.0.0")
    fleet_ids = [f"bk-{n:03d}" for n in range(300)]
    _known_fleet(admin, fleet_ids)
    add_release(admin, "b2", "2.0.0")
    admin.catalog.refresh()
    published: list[str] = []
    backlog_seen: list[int] = []
    acked = [0]
    lock = threading.Lock()

    def publish(topic: str, payload: bytes) -> None:
        with lock:
            backlog_seen.append(len(published) - acked[0])
            published.append(topic)

    def backlog() -> int:
        with lock:
            return len(published) - acked[0]

    stop = threading.Event()

    def broker() -> None:  # acknowledges one offer per millisecond at most
        while not stop.wait(0.001):
            with lock:
                if acked[0] < len(published):
                    acked[0] += 1

    acker = threading.Thread(target=broker, daemon=True)
    acker.start()
    pusher = Pusher(
        registry=admin.registry, catalog=lambda: admin.catalog.current,
        offers=lambda: admin.offers, topics=settings.topics, publish=publish, backlog=backlog,
    )
    pusher.start()
    try:
        assert pusher.wait_for_revision(revision(admin), WAIT), pusher.stats
    finally:
        pusher.stop()
        stop.set()
        acker.join()
    assert sorted(published) == sorted(str(settings.topics.offer(d)) for d in fleet_ids)
    assert max(backlog_seen) <= 7 + 1, max(backlog_seen)
    assert pusher.stats.pushed == len(fleet_ids)


def test_push_is_unpaced_by_default_and_a_rate_paces_it(settings: Settings) -> None:
    import math

    from broker_bridge.push import MAX_CLAIM_CHUNK, Pusher

    assert Settings(_env_file=None).push_rate == math.inf

    def make(rate: float) -> Pusher:
        services_settings = settings
        services = Services.from_settings(services_settings)
        try:
            return Pusher(
                registry=services.registry, catalog=lambda: services.catalog.current,
                offers=lambda: services.offers, topics=settings.topics,
                publish=lambda _t, _p: None, rate=rate,
            )
        finally:
            services.close()

    unpaced = make(math.inf)
    assert unpaced._pacer is None and unpaced._claim_chunk == MAX_CLAIM_CHUNK
    paced = make(50.0)
    assert paced._pacer is not None and paced._pacer.rate == 50.0
    assert paced._claim_chunk == 10  # about 0.2 s of pacing per claim
