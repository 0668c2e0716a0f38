"""``ota device``: run the reference device client once from the command line.

Announces, installs the offered update if any, and exits with a code a script can
branch on (see :class:`ExitCode`). The outcome is one human line, or with
``--json`` one JSON object on one line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from enum import IntEnum
from pathlib import Path

from ota_core.device.client import (
    DEFAULT_BROKER_URL,
    DEFAULT_HTTP_URL,
    DEFAULT_PUBLIC_KEY,
    PROTOCOLS,
    DeviceClient,
    DeviceConfig,
    Outcome,
    OutcomeKind,
)
from ota_core.errors import KeyMaterialError, OtaError


class ExitCode(IntEnum):
    OK = 0  # installed, or already up to date
    USAGE = 2  # bad arguments or configuration (argparse also exits 2)
    ERROR_REPLY = 3  # the bridge answered with an error (e.g. unknown-build)
    REJECTED = 4  # the offer or the package failed verification
    TIMEOUT = 5  # no offer in time
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
        "Act as one device: announce the running build over MQTT, and when an update is "
        "offered, verify both signatures, download, check the SHA-256, install it and report "
        "status. Exit codes: 0 installed or up to date, 2 usage, 3 error reply, "
        "4 verification failed, 5 timeout, 6 broker connection failed, 7 download failed, "
        "8 install failed."
    )
    parser.add_argument(
        "--device-id", required=True, help="this device's id ([A-Za-z0-9._-]{1,64})"
    )
    parser.add_argument("--build-id", required=True, help="the build the device runs now")
    parser.add_argument(
        "--version", required=True, dest="device_version", help="the version the device runs now"
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
        help="base URL for relative package urls in offers (default: %(default)s)",
    )
    parser.add_argument(
        "--public-key",
        type=Path,
        default=DEFAULT_PUBLIC_KEY,
        help="the pinned release public key (default: %(default)s)",
    )
    parser.add_argument(
        "--install-dir",
        type=Path,
        help="where the installed package is written (default: a new temporary folder)",
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
        help="keep the MQTT session across reconnects (clean start off)",
    )
    parser.add_argument("--json", action="store_true", help="print the outcome as one JSON line")
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
        persistent_session=args.persistent_session,
    )


def run(args: argparse.Namespace) -> int:
    if getattr(args, "verbose", False):
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s"
        )
    try:
        config = config_from_args(args)
        client = DeviceClient(config)
    except KeyMaterialError as e:
        return _usage_error(args, f"{e.detail}; run `ota keygen` or pass --public-key", e.code)
    except OtaError as e:
        return _usage_error(args, e.detail, e.code)
    try:
        outcome = client.run_once()  # connects itself, turning a broker failure into an outcome
    finally:
        client.close()
    if args.json:
        print(json.dumps(outcome.to_dict(), sort_keys=True))
    else:
        print(outcome.message(), file=sys.stdout if outcome.ok else sys.stderr)
    return exit_code(outcome)


def _usage_error(args: argparse.Namespace, message: str, code: str) -> int:
    if args.json:
        print(
            json.dumps({"outcome": "usage-error", "ok": False, "reason": code, "detail": message})
        )
    else:
        print(f"ota device: {message}", file=sys.stderr)
    return int(ExitCode.USAGE)
