"""The fleet simulator against the real Mosquitto, a test responder built from the real
OfferBuilder and catalog, and the test HTTP server (packages and /keys)."""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from ota_core.device import DeviceConfig, OutcomeKind
from ota_core.device.fleet import Fleet, FleetConfig, SimDevice, make_devices
from ota_core.device.fleet_command import add_arguments, run
from ota_core.errors import InvalidInput
from ota_core.models import Announcement
from tests.device.harness import TOPIC_PREFIX, OfferResponder, PackageServer, World
from tests.support.mosquitto import start_secure_mosquitto

FULL_RUN = ["downloading", "verifying", "installing", "installed"]
INJECTED_RUN = ["downloading", "verifying", "installing", "failed"]


def fleet_ids(count: int) -> list[SimDevice]:
    return make_devices(
        count, build_id="build-1001", version="1.1.0", prefix=f"fl-{uuid.uuid4().hex[:6]}"
    )


def states_of(responder: OfferResponder, device_id: str) -> list[str]:
    return [s.state.value for s in responder.statuses[device_id]]


def test_200_devices_all_install_on_one_network_thread(
    device_config: object, responder: OfferResponder, http_server: PackageServer, world: World
) -> None:
    devices = fleet_ids(200)
    config = FleetConfig(devices=tuple(devices), template=device_config)  # type: ignore[arg-type]
    threads_before = threading.active_count()
    with Fleet(config) as fleet:
        assert fleet.wait(120), fleet.summary()
        assert fleet.summary() == {"installed": 200}
        stats = fleet.stats()
        assert stats.mqtt_connections == 200
        # One network thread, the worker pool and the timer: not a thread per device.
        names = [t.name for t in threading.enumerate()]
        fleet_threads = [n for n in names if n.startswith("ota-fleet")]
        assert len(fleet_threads) <= config.workers + config.loop_threads + 1
        prefix = devices[0].device_id.rsplit("-", 1)[0]
        assert not [n for n in names if prefix in n]  # no paho thread of a device
        assert stats.threads > threads_before
        # One shared pool: a handful of connections for 200 downloads.
        assert stats.http_connections_opened <= config.http_connections * 2
        records = fleet.records
    for device in devices:
        record = records[device.device_id]
        assert record.final == "installed"
        assert [s.state for s in record.statuses] == FULL_RUN
        [offer] = record.offers
        assert (offer.status, offer.build_id) == ("update-available", "build-1002")
        assert offer.at <= record.statuses[0].at
    for device in devices:
        assert responder.wait_statuses(device.device_id) == FULL_RUN


def test_failure_injection_fails_exactly_the_chosen_devices_after_a_real_download(
    device_config: object, responder: OfferResponder, http_server: PackageServer
) -> None:
    devices = fleet_ids(60)
    chosen = frozenset(d.device_id for d in devices[::7])
    config = FleetConfig(
        devices=tuple(devices),
        template=device_config,  # type: ignore[arg-type]
        fail_devices=chosen,
        fail_fraction=0.25,
        fail_seed="test-seed",
    )
    picked = {d.device_id for d in devices if config.fails(d.device_id)}
    assert chosen <= picked
    assert len(picked) < len(devices)
    downloads_before = len(http_server.package_requests())
    with Fleet(config) as fleet:
        assert fleet.failing == picked
        assert fleet.wait(60), fleet.summary()
        records = fleet.records
    assert {i for i, r in records.items() if r.final == "install-failed"} == picked
    assert {i for i, r in records.items() if r.final == "installed"} == {
        d.device_id for d in devices
    } - picked
    for device_id in picked:
        assert responder.wait_statuses(device_id) == INJECTED_RUN
        detail = responder.statuses[device_id][-1].detail or ""
        assert detail == "install-failed: injected failure (simulated bad install)"
    # Every device downloaded for real, the failing ones too.
    assert len(http_server.package_requests()) - downloads_before == len(devices)
    # The same ids are picked on every run.
    assert {d.device_id for d in devices if replace(config).fails(d.device_id)} == picked


def test_without_download_devices_verify_offers_and_fetch_nothing(
    device_config: object, responder: OfferResponder, http_server: PackageServer
) -> None:
    devices = fleet_ids(30)
    before = len(http_server.package_requests())
    config = FleetConfig(devices=tuple(devices), template=device_config, download=False)  # type: ignore[arg-type]
    with Fleet(config) as fleet:
        assert fleet.wait(60)
        assert fleet.summary() == {"installed": 30}
    assert len(http_server.package_requests()) == before
    assert responder.wait_statuses(devices[0].device_id) == FULL_RUN


def test_refusals_are_recorded_per_device(
    device_config: object, responder: OfferResponder, world: World
) -> None:
    devices = fleet_ids(10)
    forged_for = {devices[3].device_id}

    def forge_some(device_id: str, a: Announcement) -> list[bytes]:
        if device_id in forged_for:
            return [world.offer("build-2002", device_id, a.request_id).to_bytes()]
        return responder.policy_answer(device_id, a)

    responder.answer = forge_some
    config = FleetConfig(devices=tuple(devices), template=device_config)  # type: ignore[arg-type]
    with Fleet(config) as fleet:
        assert fleet.wait(60)
        records = fleet.records
    refused = records[devices[3].device_id]
    assert refused.final == "rejected"
    assert refused.outcomes[-1].reason == "manifest-signature"
    assert fleet.summary() == {"installed": 9, "rejected": 1}


def test_no_answer_is_a_timeout_in_the_record(
    device_config: object, responder: OfferResponder
) -> None:
    responder.answer = lambda device_id, a: []
    template = replace(device_config, timeout=1)  # type: ignore[type-var]
    config = FleetConfig(devices=tuple(fleet_ids(5)), template=template)
    with Fleet(config) as fleet:
        assert fleet.wait(30)
        assert fleet.summary() == {"timeout": 5}


def test_listen_mode_installs_pushes_sent_while_the_fleet_was_offline(
    device_config: object, responder: OfferResponder, world: World
) -> None:
    devices = fleet_ids(40)
    responder.answer = lambda device_id, a: []  # the announcements go unanswered
    template = replace(device_config, timeout=2)  # type: ignore[type-var]
    config = FleetConfig(
        devices=tuple(devices), template=template, mode="listen", announce_first=False
    )
    with Fleet(config) as fleet:  # first contact: persistent sessions are made
        assert fleet.stats().mqtt_connections == 40
    for device in devices:
        responder.publish_offer(
            device.device_id, world.offer("build-1002", device.device_id, None).to_bytes()
        )
    with Fleet(config) as fleet:
        ok = fleet.wait_for(lambda records: all(r.installs for r in records.values()), 60)
        assert ok, fleet.summary()
        records = fleet.records
    for device in devices:
        outcome = records[device.device_id].outcomes[-1]
        assert outcome.kind is OutcomeKind.INSTALLED
        assert outcome.pushed


def test_one_connection_many_ids(
    device_config: object, responder: OfferResponder, http_server: PackageServer
) -> None:
    devices = fleet_ids(50)
    config = FleetConfig(
        devices=tuple(devices),
        template=device_config,  # type: ignore[arg-type]
        connection="shared",
        download=False,
    )
    with Fleet(config) as fleet:
        assert fleet.wait(60), fleet.summary()
        assert fleet.summary() == {"installed": 50}
        assert fleet.stats().mqtt_connections == 1
    for device in devices:
        assert responder.wait_statuses(device.device_id) == FULL_RUN


def test_fleet_config_is_checked() -> None:
    from ota_core.device import DeviceConfig

    template = DeviceConfig(device_id="t", build_id="b", version="1.0")
    devices = make_devices(2, build_id="b", version="1.0")
    with pytest.raises(InvalidInput, match="unique"):
        FleetConfig(devices=(devices[0], devices[0]), template=template)
    with pytest.raises(InvalidInput, match="not in the fleet"):
        FleetConfig(devices=tuple(devices), template=template, fail_devices=frozenset({"x"}))
    with pytest.raises(InvalidInput, match="fail_fraction"):
        FleetConfig(devices=tuple(devices), template=template, fail_fraction=2)


# --- ota fleet ---------------------------------------------------------------------------------


def test_ota_fleet_command(
    device_config: object,
    responder: OfferResponder,
    world: World,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="ota fleet")
    add_arguments(parser)
    prefix = f"cmd-{uuid.uuid4().hex[:6]}"
    records = tmp_path / "records.jsonl"
    args = parser.parse_args(
        [
            "--count", "20", "--id-prefix", prefix,
            "--build-id", "build-1001", "--version", "1.1.0",
            "--broker", device_config.broker_url,  # type: ignore[attr-defined]
            "--http", device_config.http_base_url,  # type: ignore[attr-defined]
            "--public-key", str(world.public_key_path),
            "--topic-prefix", TOPIC_PREFIX,
            "--fail-devices", f"{prefix}-00003,{prefix}-00007",
            "--records", str(records), "--json",
        ]
    )  # fmt: skip
    code = run(args)
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert code == 0, out
    assert summary["outcomes"] == {"installed": 18, "install-failed": 2}
    assert summary["injected_failures"] == 2
    assert summary["stats"]["devices"] == 20
    lines = [json.loads(line) for line in records.read_text().splitlines()]
    assert len(lines) == 20
    failed = {line["device_id"] for line in lines if line["final"] == "install-failed"}
    assert failed == {f"{prefix}-00003", f"{prefix}-00007"}


# --- the shipped, locked-down broker ------------------------------------------------------------


def test_fleet_with_per_device_credentials_on_the_locked_down_broker(
    device_config: DeviceConfig, world: World, http_server: PackageServer, tmp_path: Path
) -> None:
    """Each simulated device logs in as itself on the broker as shipped (passwords, ACL);
    the one-connection mode, as documented, gets nothing there."""
    devices = make_devices(
        12,
        build_id="build-1001",
        version="1.1.0",
        prefix=f"sec-{uuid.uuid4().hex[:6]}",
        password_for=lambda device_id: f"password-of-{device_id}",
    )
    users = {d.device_id: f"password-of-{d.device_id}" for d in devices}
    users["ota-bridge"] = "bridge-password-123456"
    broker = start_secure_mosquitto(tmp_path / "secure", users)
    responder = OfferResponder(
        broker.url,
        world.catalog,
        world.builder,
        username="ota-bridge",
        password="bridge-password-123456",
    )
    try:
        # The ACL is written for the shipped prefix, ota/v1.
        template = replace(device_config, broker_url=broker.url, topic_prefix="ota/v1")
        with Fleet(FleetConfig(devices=tuple(devices), template=template)) as fleet:
            assert fleet.wait(60), fleet.summary()
            assert fleet.summary() == {"installed": 12}
        for device in devices:
            assert responder.wait_statuses(device.device_id) == FULL_RUN

        # One connection for every id, logged in as one device: the ACL lets it announce
        # for that device only, and it never reads the others' offers.
        first = devices[0]
        shared = FleetConfig(
            devices=tuple(make_devices(3, build_id="build-1001", version="1.1.0",
                                       prefix=f"shr-{uuid.uuid4().hex[:6]}")),
            template=replace(template, timeout=2, mqtt_username=first.device_id,
                             mqtt_password=first.mqtt_password),
            connection="shared",
        )  # fmt: skip
        with Fleet(shared) as fleet:
            assert fleet.wait(30)
            assert fleet.summary() == {"timeout": 3}
    finally:
        responder.close()
        broker.stop()
