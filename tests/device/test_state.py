"""Installed state across runs: state.json in the install folder, and the release counter
as the anti-rollback floor (real Mosquitto, real HTTP, real signed releases)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest

from ota_core.device import DeviceClient, InstalledState, OutcomeKind, StateFileError, load_state
from ota_core.device.command import ExitCode, add_arguments, run
from ota_core.device.state import save_state
from ota_core.models import Announcement
from tests.device.harness import DeviceFactory, OfferResponder, PackageServer, World, make_package


def test_an_install_writes_the_state_and_the_next_run_starts_from_it(
    make_device: DeviceFactory, responder: OfferResponder, world: World, tmp_path: Path
) -> None:
    first = make_device()
    assert not first.state_loaded
    assert first.run_once().kind is OutcomeKind.INSTALLED
    folder = first.install_dir()
    release = world.release("build-1002")
    state = json.loads((folder / "state.json").read_text())
    assert state["build_id"] == "build-1002"
    assert state["version"] == "1.2.0"
    assert state["release_counter"] == release.release_counter
    assert state["sha256"] == release.sha256
    assert state["installed_at"].endswith("Z")
    assert not [p for p in os.listdir(folder) if p.endswith(".tmp")]  # written atomically
    first.close()

    # The next run is configured with the factory build; the state file wins.
    again = make_device(device_id=first.config.device_id)
    assert again.state_loaded
    assert (again.build_id, again.version) == ("build-1002", "1.2.0")
    assert again.release_counter == release.release_counter
    outcome = again.run_once()
    assert outcome.kind is OutcomeKind.UP_TO_DATE
    announced = responder.announcements[first.config.device_id][-1]
    assert (announced.build_id, announced.version) == ("build-1002", "1.2.0")


def test_the_release_counter_survives_restarts_and_stops_a_rollback(
    make_device: DeviceFactory,
    responder: OfferResponder,
    world: World,
    http_server: PackageServer,
) -> None:
    """A release with a higher version but a lower counter (say an old vulnerable build
    re-signed with a new version number) is refused after a restart: the counter floor
    came back from state.json."""
    sneaky = make_package(world.signer, "build-1500", "1.5.0", 1, os.urandom(4_000))
    http_server.add(sneaky.path, sneaky.body)

    first = make_device()
    assert first.run_once().kind is OutcomeKind.INSTALLED  # build-1002, counter 3
    first.close()

    def offer_sneaky(device_id: str, a: Announcement) -> list[bytes]:
        return [world.builder.update_offer(sneaky.release, device_id, a.request_id).to_bytes()]

    responder.answer = offer_sneaky
    again = make_device(device_id=first.config.device_id)
    before = len(http_server.package_requests())
    outcome = again.run_once()
    assert outcome.kind is OutcomeKind.REJECTED, outcome.message()
    assert outcome.reason == "rollback"
    assert "release counter 1 is not above 3" in (outcome.detail or "")
    assert len(http_server.package_requests()) == before
    assert load_state(again.install_dir()) == load_state(first.install_dir())  # unchanged


def test_without_a_state_file_the_counter_is_unknown_and_the_version_decides(
    make_device: DeviceFactory, responder: OfferResponder, world: World, http_server: PackageServer
) -> None:
    sneaky = make_package(world.signer, "build-1501", "1.5.1", 1, os.urandom(4_000))
    http_server.add(sneaky.path, sneaky.body)
    responder.answer = lambda device_id, a: [
        world.builder.update_offer(sneaky.release, device_id, a.request_id).to_bytes()
    ]
    outcome = make_device().run_once()
    assert outcome.kind is OutcomeKind.INSTALLED, outcome.message()


def test_a_state_file_that_cannot_be_read_stops_the_device(
    make_device: DeviceFactory, tmp_path: Path
) -> None:
    folder = tmp_path / "installed"
    folder.mkdir()
    (folder / "state.json").write_text("{broken")
    with pytest.raises(StateFileError, match="not valid JSON"):
        make_device(connect=False)
    (folder / "state.json").write_text(json.dumps({"build_id": "b/1", "version": "1.0"}))
    with pytest.raises(StateFileError, match="build_id"):
        make_device(connect=False)
    (folder / "state.json").write_text(
        json.dumps({"build_id": "b1", "version": "1.0", "release_counter": -1})
    )
    with pytest.raises(StateFileError, match="release_counter"):
        make_device(connect=False)


def test_the_cli_says_so_and_exits_2_on_a_bad_state_file(
    tmp_path: Path, world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "installed"
    folder.mkdir()
    (folder / "state.json").write_text("[]")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--device-id", "d1", "--build-id", "b1", "--version", "1.0",
         "--public-key", str(world.public_key_path), "--install-dir", str(folder)]
    )  # fmt: skip
    assert run(args) == ExitCode.USAGE
    assert "state.json must hold a JSON object" in capsys.readouterr().err


def test_state_round_trip(tmp_path: Path) -> None:
    state = InstalledState.now("build-9", "9.0.0", 9, "ab" * 32)
    save_state(tmp_path, state)
    assert load_state(tmp_path) == state
    assert load_state(tmp_path / "nothing-here") is None


def test_persist_state_off_leaves_no_file(
    make_device: DeviceFactory, responder: OfferResponder
) -> None:
    device: DeviceClient = make_device(persist_state=False)
    assert device.run_once().kind is OutcomeKind.INSTALLED
    assert not (device.install_dir() / "state.json").exists()
