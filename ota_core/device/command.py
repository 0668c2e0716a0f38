"""``ota device``: run the reference device client from the command line.

Once (the default): announce, act on the answer, exit with a code a script can
branch on (see :class:`ExitCode`). The outcome is one human line, or with
``--json`` one JSON object on one line.

``--listen``: stay connected with a persistent MQTT session and install pushed
offers as they arrive, one line per outcome, until ``--max-installs`` installs or
``--duration`` seconds (or SIGINT/SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from enum import IntEnum
from pathlib import Path
from types import FrameType

from ota_core.device.client import (
    DEFAULT_BROKER_URL,
    DEFAULT_HTTP_URL,
    DEFAULT_PUBLIC_KEY,
    PROTOCOLS,
    BrokerUnavailable,
    DeviceClient,
    DeviceConfig,
    Outcome,
    OutcomeKind,
)
from ota_core.errors import KeyMaterialError, OtaError


class ExitCode(IntEnum):
    OK = 0  # installed, or already up to date; --listen: stopped as asked
    USAGE = 2  # bad arguments or configuration, unreadable key or state file
    ERROR_REPLY = 3  # the bridge answered with an error (e.g. unknown-build)
    REJECTED = 4  # the offer, the reply or the package failed verification
    TIMEOUT = 5  # no offer in time; --listen: --duration ended before --max-installs
    CONNECT_FAILED = 6  # broker unreachable, or it refused the connection/subscription
    DOWNLOAD_FAILED = 7  # the package could not be fetched
    INSTALL_FAILED = 8  # the package could not be written


EXIT_CODES: dict[OutcomeKind, ExitCode] = {
    OutcomeKind.INSTALLED: ExitCode.OK,
    OutcomeKind.UP_TO_DATE: ExitCode.OK,
    OutcomeKind.ERROR_REPLY: ExitCode.ERROR_REPLY,
    OutcomeKind.REJECTED: ExitCode.REJECTED,
    OutcomeKind.TIMEOUT: ExitCode.TIMEOUT,
    OutcomeKind.CONNECT_FAILED: ExitCode.CONNECT_FAILED,
    OutcomeKind.DOWNLOAD_FAILED: ExitCode.DOWNLOAD_FAILED,
    OutcomeKind.INSTALL_FAILED: ExitCode.INSTALL_FAILED,
}


def exit_code(outcome: Outcome) -> int:
    return int(EXIT_CODES[outcome.kind])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Act as one device: announce the running build over MQTT and, when an update is "
        "offered, verify the signed envelope and both release signatures, download, check "
        "the SHA-256, install it and report status. With --listen, stay connected and "
        "install pushed offers. When --install-dir holds a state.json from an earlier "
        "install, it overrides --build-id/--version and its release counter is the "
        "anti-rollback floor. Exit codes: 0 installed or up to date, 2 usage, "
        "3 error reply, 4 verification failed (offer, reply or package), 5 timeout, "
        "6 broker connection failed, 7 download failed, 8 install failed."
    )
    parser.add_argument(
        "--device-id", required=True, help="this device's id ([A-Za-z0-9._-]{1,64})"
    )
    parser.add_argument(
        "--build-id",
        required=True,
        help="the build the device runs now (a state.json in --install-dir overrides it)",
    )
    parser.add_argument(
        "--version",
        required=True,
        dest="device_version",
        help="the version the device runs now (a state.json in --install-dir overrides it)",
    )
    parser.add_argument("--hardware", help="hardware id; releases for other hardware are refused")
    parser.add_argument("--channel", help="release channel, e.g. stable or beta")
    parser.add_argument(
        "--broker",
        default=os.environ.get("OTA_BROKER_URL") or DEFAULT_BROKER_URL,
        help="MQTT broker, mqtt://host:port (default: $OTA_BROKER_URL or %(default)s)",
    )
    parser.add_argument(
        "--http",
        default=DEFAULT_HTTP_URL,
        help="base URL for relative package urls in offers and for /keys (default: %(default)s)",
    )
    parser.add_argument(
        "--public-key",
        type=Path,
        default=DEFAULT_PUBLIC_KEY,
        help="the pinned release public key (default: %(default)s)",
    )
    trust = parser.add_mutually_exclusive_group()
    trust.add_argument(
        "--offer-keys",
        type=Path,
        metavar="FILE",
        help="pin these offer keys instead of fetching them: the JSON of GET /keys or the "
        "server's keys/offer-keys.json; each key is trusted as listed until its not_after. "
        "Default: GET <--keys-url> at start, trusting only keys certified by --public-key, "
        "and again when an offer names an unknown key (rotation)",
    )
    trust.add_argument(
        "--insecure-unsealed",
        action="store_true",
        help="INSECURE: accept offers without a signed envelope (a seed-era server without "
        "an offer key); turns off the device-binding, replay and expiry checks",
    )
    parser.add_argument("--keys-url", help="where to fetch the offer keys (default: <--http>/keys)")
    parser.add_argument(
        "--install-dir",
        type=Path,
        help="where the installed package and state.json are written "
        "(default: a new temporary folder, and no state kept)",
    )
    parser.add_argument("--username", help="MQTT username")
    parser.add_argument(
        "--password",
        default=os.environ.get("OTA_DEVICE_PASSWORD"),
        help="MQTT password (default: $OTA_DEVICE_PASSWORD; prefer it: arguments show in ps)",
    )
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="auto",
        help="MQTT protocol version; auto (the default) uses 5 and falls back to 3.1.1 when "
        "the broker refuses 5, as the embedded amqtt broker does",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds to wait for the broker, the offer and each HTTP read (default: %(default)s)",
    )
    parser.add_argument(
        "--topic-prefix", default="ota/v1", help="MQTT topic prefix (default: %(default)s)"
    )
    parser.add_argument(
        "--persistent-session",
        action="store_true",
        help="keep the MQTT session across reconnects (clean start off; implied by --listen)",
    )
    listen = parser.add_argument_group("push mode")
    listen.add_argument(
        "--listen",
        action="store_true",
        help="stay connected (persistent session, client id = device id) and install "
        "pushed offers as they arrive, including those queued while offline",
    )
    listen.add_argument(
        "--max-installs",
        type=int,
        metavar="N",
        help="with --listen: exit 0 after N installs (exit 5 if --duration ends first)",
    )
    listen.add_argument(
        "--duration", type=float, metavar="S", help="with --listen: stop after S seconds"
    )
    listen.add_argument(
        "--no-announce",
        action="store_true",
        help="with --listen: do not announce at start, only wait for pushes",
    )
    parser.add_argument("--json", action="store_true", help="print each outcome as one JSON line")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log each step (connect, offer, download)"
    )


def config_from_args(args: argparse.Namespace) -> DeviceConfig:
    return DeviceConfig(
        device_id=args.device_id,
        build_id=args.build_id,
        version=args.device_version,
        hardware=args.hardware,
        channel=args.channel,
        broker_url=args.broker,
        http_base_url=args.http,
        public_key_path=args.public_key,
        install_dir=args.install_dir,
        mqtt_username=args.username,
        mqtt_password=args.password,
        protocol=args.protocol,
        timeout=args.timeout,
        topic_prefix=args.topic_prefix,
        persistent_session=args.persistent_session or args.listen,
        offer_keys_path=args.offer_keys,
        keys_url=args.keys_url,
        insecure_unsealed=args.insecure_unsealed,
    )


def run(args: argparse.Namespace) -> int:
    if getattr(args, "verbose", False):
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s"
        )
    if not args.listen and (args.max_installs is not None or args.duration is not None):
        return _usage_error(args, "--max-installs and --duration need --listen", "bad-request")
    if args.max_installs is not None and args.max_installs < 1:
        return _usage_error(args, "--max-installs must be at least 1", "bad-request")
    try:
        config = config_from_args(args)
        client = DeviceClient(config)
    except KeyMaterialError as e:
        hint = "run `ota keygen` or pass --public-key"
        if args.offer_keys is not None:
            hint = "pass the JSON of GET /keys or the server's keys/offer-keys.json"
        return _usage_error(args, f"{e.detail}; {hint}", e.code)
    except OtaError as e:
        return _usage_error(args, e.detail, e.code)
    try:
        if args.listen:
            return _listen(client, args)
        outcome = client.run_once()  # connects itself, turning a broker failure into an outcome
    finally:
        client.close()
    _print(outcome, args)
    return exit_code(outcome)


def _print(outcome: Outcome, args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(outcome.to_dict(), sort_keys=True), flush=True)
    else:
        print(outcome.message(), file=sys.stdout if outcome.ok else sys.stderr, flush=True)


def _listen(client: DeviceClient, args: argparse.Namespace) -> int:
    stop = threading.Event()
    try:
        with _stop_on_signals(stop):
            result = client.listen(
                max_installs=args.max_installs,
                duration=args.duration,
                announce=not args.no_announce,
                stop=stop,
                on_outcome=lambda outcome: _print(outcome, args),
            )
    except BrokerUnavailable as e:
        outcome = Outcome(
            OutcomeKind.CONNECT_FAILED,
            client.config.device_id,
            client.build_id,
            client.version,
            reason=e.code,
            detail=e.detail,
        )
        _print(outcome, args)
        return int(ExitCode.CONNECT_FAILED)
    if result.stopped == "duration" and args.max_installs is not None:
        return int(ExitCode.TIMEOUT)
    return int(ExitCode.OK)


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM/SIGINT end --listen cleanly (status reports flushed, session kept)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _usage_error(args: argparse.Namespace, message: str, code: str) -> int:
    if args.json:
        print(
            json.dumps({"outcome": "usage-error", "ok": False, "reason": code, "detail": message})
        )
    else:
        print(f"ota device: {message}", file=sys.stderr)
    return int(ExitCode.USAGE)
