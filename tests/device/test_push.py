"""Push mode (issue 4): offers published without a request, installed as they arrive,
including those the broker queued while the device was offline (persistent session,
QoS 1) — on the real Mosquitto."""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import pytest

from ota_core.device import OutcomeKind
from ota_core.device.command import ExitCode, add_arguments, run
from ota_core.models import Announcement
from ota_core.offers import OfferBuilder
from tests.device.harness import TOPIC_PREFIX, DeviceFactory, OfferResponder, World, tampered
from tests.support import MosquittoServer

FULL_RUN = ["downloading", "verifying", "installing", "installed"]


def test_a_pushed_offer_is_installed_through_every_check(
    make_device: DeviceFactory, responder: OfferResponder, world: World
) -> None:
    device = make_device(persistent_session=True)
    me = device.config.device_id
    responder.publish_offer(me, world.offer("build-1002", me, None).to_bytes())
    result = device.listen(announce=False, max_installs=1, duration=30)
    assert result.stopped == "max-installs"
    [outcome] = result.outcomes
    assert outcome.kind is OutcomeKind.INSTALLED, outcome.message()
    assert outcome.pushed
    assert outcome.request_id is None
    assert (device.build_id, device.version) == ("build-1002", "1.2.0")
    assert responder.wait_statuses(me) == FULL_RUN
    assert {s.request_id for s in responder.statuses[me]} == {None}


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_an_offer_pushed_while_offline_is_installed_on_reconnect(
    make_device: DeviceFactory,
    responder: OfferResponder,
    world: World,
    mosquitto: MosquittoServer,
    protocol: str,
) -> None:
    # First contact creates the persistent session (subscription kept by the broker).
    first = make_device(persistent_session=True, protocol=protocol)
    me = first.config.device_id
    first.close()

    responder.publish_offer(me, world.offer("build-1002", me, None).to_bytes())

    again = make_device(connect=False, persistent_session=True, protocol=protocol)
    result = again.listen(announce=False, max_installs=1, duration=30)
    [outcome] = result.outcomes
    assert outcome.kind is OutcomeKind.INSTALLED, outcome.message()
    assert outcome.pushed
    assert responder.wait_statuses(me) == FULL_RUN


def test_without_a_persistent_session_an_offline_push_is_lost(
    make_device: DeviceFactory, responder: OfferResponder, world: World
) -> None:
    """The control for the test above: with a clean session the broker keeps nothing."""
    first = make_device(persistent_session=False, protocol="5")
    me = first.config.device_id
    first.close()
    responder.publish_offer(me, world.offer("build-1002", me, None).to_bytes())
    again = make_device(connect=False, persistent_session=False, protocol="5")
    result = again.listen(announce=False, max_installs=1, duration=1.5)
    assert result.stopped == "duration"
    assert result.outcomes == ()


def test_a_replayed_answer_pushed_without_its_request_id_is_refused(
    make_device: DeviceFactory, responder: OfferResponder, world: World
) -> None:
    device = make_device(persistent_session=True)
    me = device.config.device_id
    # An answer to an old request, request_id stripped to pass for a push: the signed
    # envelope still names the old nonce.
    replay = tampered(world.offer("build-1002", me, "old-request"), request_id=None)
    responder.publish_offer(me, replay)
    responder.publish_offer(me, world.offer("build-1002", me, None).to_bytes())
    result = device.listen(announce=False, max_installs=1, duration=30)
    refused, installed = result.outcomes
    assert refused.kind is OutcomeKind.REJECTED
    assert refused.reason == "wrong-request"
    assert installed.kind is OutcomeKind.INSTALLED
    assert responder.wait_final_count(me, 2) == ["failed", *FULL_RUN]


def test_a_push_for_another_device_is_refused(
    make_device: DeviceFactory, responder: OfferResponder, world: World
) -> None:
    device = make_device(persistent_session=True)
    me = device.config.device_id
    responder.publish_offer(me, world.offer("build-1002", "someone-else", None).to_bytes())
    stop = threading.Event()
    result = device.listen(
        announce=False, duration=30, stop=stop, on_outcome=lambda outcome: stop.set()
    )
    [outcome] = result.outcomes
    assert outcome.reason == "wrong-device"
    assert result.stopped == "stopped"


def test_an_expired_push_makes_the_device_announce_and_install_a_fresh_offer(
    make_device: DeviceFactory, responder: OfferResponder, world: World
) -> None:
    device = make_device(persistent_session=True)
    me = device.config.device_id
    past = time.time() - 3 * 24 * 3600
    stale = OfferBuilder(offer_signer=world.offer_signer, clock=lambda: past)
    responder.publish_offer(
        me, stale.update_offer(world.release("build-1002"), me, None).to_bytes()
    )
    result = device.listen(announce=False, max_installs=1, duration=30)
    [outcome] = result.outcomes
    assert outcome.kind is OutcomeKind.INSTALLED, outcome.message()
    assert outcome.retried == "expired"
    assert not outcome.pushed  # installed from the answer to the new announcement
    assert len(responder.announcements[me]) == 1


def test_a_duplicate_push_of_what_runs_is_ignored(
    make_device: DeviceFactory, responder: OfferResponder, world: World
) -> None:
    device = make_device(persistent_session=True)
    me = device.config.device_id
    push = world.offer("build-1002", me, None).to_bytes()
    responder.publish_offer(me, push)
    responder.publish_offer(me, push)  # a QoS 1 redelivery, or the bridge pushing twice
    result = device.listen(announce=False, duration=2)
    assert [o.kind for o in result.outcomes] == [OutcomeKind.INSTALLED]
    assert responder.wait_statuses(me) == FULL_RUN


def test_listen_announces_first_and_installs_the_answer(
    make_device: DeviceFactory, responder: OfferResponder
) -> None:
    device = make_device(persistent_session=True)
    result = device.listen(max_installs=1, duration=30)
    assert result.stopped == "max-installs"
    [outcome] = result.outcomes
    assert outcome.kind is OutcomeKind.INSTALLED
    assert not outcome.pushed


# --- the command line -------------------------------------------------------------------------


@pytest.fixture
def listen_args(
    device_config: object, mosquitto: MosquittoServer, world: World, tmp_path: Path
) -> list[str]:
    config = device_config
    return [
        "--device-id", config.device_id,  # type: ignore[attr-defined]
        "--build-id", "build-1001", "--version", "1.1.0",
        "--broker", mosquitto.url,
        "--http", config.http_base_url,  # type: ignore[attr-defined]
        "--public-key", str(world.public_key_path),
        "--install-dir", str(tmp_path / "cli-installed"),
        "--topic-prefix", TOPIC_PREFIX,
        "--listen", "--json",
    ]  # fmt: skip


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ota device")
    add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_listen_installs_a_push_queued_while_offline_and_exits_0(
    make_device: DeviceFactory,
    responder: OfferResponder,
    world: World,
    listen_args: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The device was here before (persistent session), then went offline.
    make_device(persistent_session=True).close()
    me = listen_args[1]
    responder.publish_offer(me, world.offer("build-1002", me, None).to_bytes())
    code = run(_parse([*listen_args, "--no-announce", "--max-installs", "1", "--duration", "30"]))
    assert code == ExitCode.OK
    [line] = capsys.readouterr().out.splitlines()
    result = json.loads(line)
    assert result["outcome"] == "installed"
    assert result["pushed"] is True


def test_cli_listen_prints_one_line_per_outcome(
    responder: OfferResponder, world: World, listen_args: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    def forged_then_policy(device_id: str, a: Announcement) -> list[bytes]:
        if len(responder.announcements[device_id]) == 1:
            return [world.offer("build-2002", device_id, a.request_id).to_bytes()]
        return responder.policy_answer(device_id, a)

    responder.answer = forged_then_policy
    code = run(_parse([*listen_args, "--max-installs", "1", "--duration", "3"]))
    assert code == ExitCode.TIMEOUT  # the announcement's offer was forged; nothing pushed
    [line] = capsys.readouterr().out.splitlines()
    assert json.loads(line)["reason"] == "manifest-signature"


def test_cli_listen_flags_need_listen(
    listen_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    args = [a for a in listen_args if a != "--listen"]
    assert run(_parse([*args, "--duration", "1"])) == ExitCode.USAGE
    assert "need --listen" in capsys.readouterr().out
