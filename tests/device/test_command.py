"""``ota device`` (add_arguments/run) against real Mosquitto and HTTP: output and exit codes."""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from ota_core.device.command import ExitCode, add_arguments, run
from ota_core.errors import UnknownBuild
from ota_core.models import Announcement, UpToDate
from ota_core.offers import error_reply
from tests.device.harness import TOPIC_PREFIX, OfferResponder, PackageServer, World, tampered
from tests.support import MosquittoServer


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ota device")
    add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture
def base_args(
    mosquitto: MosquittoServer, http_server: PackageServer, world: World, tmp_path: Path
) -> list[str]:
    return [
        "--device-id",
        f"cli-{uuid.uuid4().hex[:12]}",
        "--build-id",
        "build-1001",
        "--version",
        "1.1.0",
        "--broker",
        mosquitto.url,
        "--http",
        http_server.url,
        "--public-key",
        str(world.public_key_path),
        "--install-dir",
        str(tmp_path / "installed"),
        "--topic-prefix",
        TOPIC_PREFIX,
    ]


def test_installs_and_prints_one_json_line(
    base_args: list[str],
    responder: OfferResponder,
    world: World,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = run(parse(*base_args, "--json"))
    out = capsys.readouterr().out
    assert code == 0
    [line] = out.splitlines()
    result = json.loads(line)
    release = world.release("build-1002")
    assert result["outcome"] == "installed"
    assert result["ok"] is True
    assert (result["build_id"], result["version"]) == ("build-1002", "1.2.0")
    assert result["sha256"] == release.sha256
    assert Path(result["path"]) == tmp_path / "installed" / release.filename
    assert Path(result["path"]).is_file()


def test_up_to_date_prints_a_human_line(
    base_args: list[str], responder: OfferResponder, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [*base_args, "--build-id", "build-1002", "--version", "1.2.0"]
    assert run(parse(*args)) == 0
    out, _ = capsys.readouterr()
    assert "up to date at build-1002 (1.2.0)" in out


def _error(device_id: str, a: Announcement, responder: OfferResponder, world: World) -> list[bytes]:
    return [world.builder.error(device_id, a.request_id, UnknownBuild("no such build")).to_bytes()]


def _forged(
    device_id: str, a: Announcement, responder: OfferResponder, world: World
) -> list[bytes]:
    # Sealed by the genuine offer key, but the release was signed by another release key.
    return [world.offer("build-2002", device_id, a.request_id).to_bytes()]


def _forged_up_to_date(
    device_id: str, a: Announcement, responder: OfferResponder, world: World
) -> list[bytes]:
    # A freeze attack: "nothing new" without the offer key's seal.
    reply = UpToDate(device_id=device_id, request_id=a.request_id, build_id=a.build_id)
    return [reply.to_bytes()]


def _forged_error(
    device_id: str, a: Announcement, responder: OfferResponder, world: World
) -> list[bytes]:
    return [error_reply(device_id, a.request_id, UnknownBuild("no such build")).to_bytes()]


def _nothing(
    device_id: str, a: Announcement, responder: OfferResponder, world: World
) -> list[bytes]:
    return []


def _gone(device_id: str, a: Announcement, responder: OfferResponder, world: World) -> list[bytes]:
    offer = world.offer("build-1002", device_id, a.request_id)
    return [tampered(offer, url="/packages/gone.zip")]


@pytest.mark.parametrize(
    ("answer", "code", "words"),
    [
        pytest.param(_error, ExitCode.ERROR_REPLY, "unknown-build", id="error-reply"),
        pytest.param(_forged, ExitCode.REJECTED, "manifest-signature", id="rejected"),
        pytest.param(_nothing, ExitCode.TIMEOUT, "no offer", id="timeout"),
        pytest.param(_gone, ExitCode.DOWNLOAD_FAILED, "HTTP 404", id="download-failed"),
    ],
)
def test_failures_have_distinct_exit_codes_and_one_line(
    base_args: list[str],
    responder: OfferResponder,
    world: World,
    capsys: pytest.CaptureFixture[str],
    answer: Any,
    code: ExitCode,
    words: str,
) -> None:
    responder.answer = lambda device_id, a: answer(device_id, a, responder, world)
    assert run(parse(*base_args, "--timeout", "2")) == code
    out, err = capsys.readouterr()
    assert out == ""
    [line] = err.splitlines()
    assert words in line

    responder.answer = lambda device_id, a: answer(device_id, a, responder, world)
    assert run(parse(*base_args, "--timeout", "2", "--json")) == code
    [line] = capsys.readouterr().out.splitlines()
    result = json.loads(line)
    assert result["ok"] is False
    assert words in f"{result['reason']}: {result['detail']}"


def test_unreachable_broker_exits_6(
    base_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"mqtt://127.0.0.1:{s.getsockname()[1]}"
        assert run(parse(*base_args, "--broker", url, "--timeout", "2")) == ExitCode.CONNECT_FAILED
    assert "cannot reach the MQTT broker" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        pytest.param(["--public-key", "/nonexistent/public.pem"], "ota keygen", id="no-key"),
        pytest.param(["--device-id", "bad/id"], "device_id", id="bad-device-id"),
        pytest.param(["--version", "not a version"], "not a version", id="bad-version"),
        pytest.param(["--broker", "http://example"], "mqtt://host:port", id="bad-broker"),
    ],
)
def test_bad_configuration_exits_2_with_a_message(
    base_args: list[str], capsys: pytest.CaptureFixture[str], extra: list[str], words: str
) -> None:
    assert run(parse(*base_args, *extra)) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("ota device: ")
    assert words in line


def test_broker_defaults_to_ota_broker_url(monkeypatch: pytest.MonkeyPatch) -> None:
    required = ["--device-id", "d", "--build-id", "b", "--version", "1.0"]
    assert parse(*required).broker == "mqtt://127.0.0.1:1883"
    monkeypatch.setenv("OTA_BROKER_URL", "mqtt://broker.example:1884")
    args = parse(*required)
    assert args.broker == "mqtt://broker.example:1884"
    assert args.http == "http://127.0.0.1:8000"
    assert args.public_key == Path("keys/public.pem")
    assert args.protocol == "auto"


_STANDALONE = (
    "import argparse, sys\n"
    "from ota_core.device.command import add_arguments, run\n"
    "parser = argparse.ArgumentParser(prog='ota device')\n"
    "add_arguments(parser)\n"
    "sys.exit(run(parser.parse_args(sys.argv[1:])))\n"
)


def test_in_its_own_process_a_refusal_is_exactly_one_line(
    base_args: list[str], responder: OfferResponder, world: World
) -> None:
    """No stray log lines: a script reading stderr gets the one message."""
    responder.answer = lambda device_id, a: _forged(device_id, a, responder, world)
    result = subprocess.run(
        [sys.executable, "-c", _STANDALONE, *base_args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == ExitCode.REJECTED, result.stderr
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert "refused the update to build-2002 (1.2.0): manifest-signature: " in line
