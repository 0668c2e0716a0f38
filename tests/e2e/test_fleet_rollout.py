"""A staged rollout to 200 simulated devices from the reference client, on real Mosquitto.

Real bridge (push worker and rollout supervisor), real HTTP side serving packages and
/keys, real database; the devices are `ota_core.device.fleet.Fleet` in listen mode,
each a real MQTT connection with a persistent session, verifying every pushed offer
and downloading the package. Checks: each stage reaches exactly its cohort; injected
failures pause the rollout with a reason; no device is ever offered a release outside
its channel/hardware or older than its own.
"""

from __future__ import annotations

import time
from pathlib import Path

from http_files import create_app
from ota_core.device.client import DeviceConfig
from ota_core.device.fleet import Fleet, FleetConfig, SimDevice
from ota_core.keyfiles import ensure_offer_key, load_signer
from ota_core.rollouts import RolloutState, in_cohort
from ota_core.services import Services
from ota_core.store.rollouts import RolloutSpec, RolloutStore
from tests.broker_bridge.peers import add_release, running_bridge
from tests.http_files.live_server import LiveServer
from tests.support import MosquittoServer, OtaDirs

WAIT = 60.0


def _dev(device_id: str, build: str, version: str, hardware: str, channel: str) -> SimDevice:
    return SimDevice(
        device_id=device_id, build_id=build, version=version, hardware=hardware, channel=channel
    )


def _fleet_devices() -> list[SimDevice]:
    devices = [_dev(f"fl-{n:03d}", "b1", "1.0.0", "board-a", "stable") for n in range(160)]
    devices += [_dev(f"beta-{n:02d}", "b1", "1.0.0", "board-a", "beta") for n in range(20)]
    devices += [_dev(f"hw-b-{n:02d}", "b1", "1.0.0", "board-b", "stable") for n in range(15)]
    # Already newer than the release: must never be offered it.
    devices += [_dev(f"new-{n}", "b9", "9.0.0", "board-a", "stable") for n in range(5)]
    return devices


def _offered_b2(fleet: Fleet) -> set[str]:
    return {
        device_id
        for device_id, record in fleet.records.items()
        if any(o.status == "update-available" and o.build_id == "b2" for o in record.offers)
    }


def test_staged_rollout_to_200_reference_devices(
    ota_dirs: OtaDirs, mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    settings = ota_dirs.settings(
        broker_url=mosquitto.url,
        mqtt_client_id=f"bridge-fleet-{time.monotonic_ns()}",
        topic_prefix=f"fleet{time.monotonic_ns() % 10**6}/v1",
        rollout_check_seconds=0.2,
    )
    ensure_offer_key(settings.keys_dir, load_signer(settings.keys_dir))
    admin = Services.from_settings(settings)
    http = LiveServer(create_app(admin, "fleet-admin-pw"))
    devices = _fleet_devices()
    stable_a = [d.device_id for d in devices if d.device_id.startswith("fl-")]
    first = {d for d in stable_a if in_cohort("b2", d, 10.0)}
    second = {d for d in stable_a if in_cohort("b2", d, 50.0)}
    failing = frozenset(sorted(second - first)[:4])
    template = DeviceConfig(
        device_id="template",
        build_id="b0",
        version="0.0.1",
        broker_url=mosquitto.url,
        http_base_url=http.url,
        public_key_path=ota_dirs.public_key_path,
        topic_prefix=settings.topic_prefix,
        timeout=WAIT,
    )
    rollouts = RolloutStore(admin.database)
    try:
        with (
            running_bridge(settings) as (bridge, _),
            Fleet(
                FleetConfig(
                    devices=tuple(devices), template=template, mode="listen", fail_devices=failing
                )
            ) as fleet,
        ):
            add_release(admin, "b1", "1.0.0")
            fleet.start(timeout=WAIT)
            assert fleet.wait_for(lambda r: all(rec.offers for rec in r.values()), WAIT)
            assert bridge.flush_registry(WAIT)
            assert len(admin.registry.all()) == len(devices)

            add_release(
                admin,
                "b2",
                "2.0.0",
                hardware="board-a",
                channel="stable",
                rollout=RolloutSpec(
                    "b2", (10.0, 50.0, 100.0), failure_threshold_percent=2.0, failure_min_count=3
                ),
            )
            (rollout,) = rollouts.all()
            assert fleet.wait_for(lambda r: all(r[d].installs == 1 for d in first), WAIT), (
                fleet.summary()
            )
            time.sleep(1.0)  # a late push to anyone else would show up here
            assert _offered_b2(fleet) == first

            rollouts.transition(rollout.rollout_id, lambda r: r.advance(time.time()))
            deadline = time.monotonic() + WAIT
            while rollouts.get(rollout.rollout_id).state is not RolloutState.PAUSED:
                assert time.monotonic() < deadline, rollouts.log(rollout.rollout_id)
                time.sleep(0.1)
            paused = rollouts.get(rollout.rollout_id)
            assert paused.stage_index == 1 and paused.reason and "exceeds 2%" in paused.reason
            assert fleet.wait_for(
                lambda r: all(r[d].final in ("installed", "install-failed") for d in second), WAIT
            ), fleet.summary()
            assert _offered_b2(fleet) == second
            assert {d for d in second if fleet.records[d].installs == 0} == failing

            # Resume and go to 100 %: every stable board-a device, and nobody else, ever.
            rollouts.transition(rollout.rollout_id, lambda r: r.resume(time.time()))
            rollouts.transition(rollout.rollout_id, lambda r: r.advance(time.time()))
            assert fleet.wait_for(
                lambda r: all(r[d].offers and _has_b2(r[d]) for d in stable_a), WAIT
            ), fleet.summary()
            time.sleep(1.0)
            assert _offered_b2(fleet) == set(stable_a)
    finally:
        http.stop()
        admin.close()


def _has_b2(record: object) -> bool:
    return any(o.build_id == "b2" and o.status == "update-available" for o in record.offers)  # type: ignore[attr-defined]
