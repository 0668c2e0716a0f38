"""``ota fleet``: run many simulated devices in one process (see :mod:`ota_core.device.fleet`).

Announce mode (the default): every device announces once, acts on the answer, and
the command prints a summary when all are done (or ``--duration`` runs out).
Listen mode: devices stay connected and install pushed offers until ``--duration``
ends or SIGINT/SIGTERM. Exit codes: 0 every device finished and every failure was
an injected one; 1 some device did not finish or failed otherwise; 2 usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ota_core.device.client import (
    DEFAULT_BROKER_URL,
    DEFAULT_HTTP_URL,
    DEFAULT_PUBLIC_KEY,
    PROTOCOLS,
    DeviceConfig,
)
from ota_core.device.fleet import Fleet, FleetConfig, SimDevice, make_devices
from ota_core.errors import InvalidInput, OtaError

EXIT_OK = 0
EXIT_INCOMPLETE = 1
EXIT_USAGE = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Simulate a fleet of devices in one process: real MQTT connections (one network "
        "thread for all), every offer verified, packages downloaded through one shared HTTP "
        "pool, status reported. Exit codes: 0 all finished as expected, 1 some did not, "
        "2 usage."
    )
    who = parser.add_argument_group("devices")
    who.add_argument("--count", type=int, default=10, help="number of devices (default 10)")
    who.add_argument(
        "--id-prefix", default="sim", help="device ids are <prefix>-00000… (default sim)"
    )
    who.add_argument("--build-id", default="factory-1", help="build every device runs")
    who.add_argument(
        "--version", dest="device_version", default="1.0.0", help="version every device runs"
    )
    who.add_argument("--hardware")
    who.add_argument("--channel")
    who.add_argument(
        "--devices",
        type=Path,
        metavar="FILE",
        help="JSON lines, one device each: {device_id, build_id, version, hardware?, "
        "channel?, mqtt_password?, mqtt_username? (default: the device id when a password "
        "is given)}; replaces --count and friends",
    )
    where = parser.add_argument_group("servers and keys")
    where.add_argument(
        "--broker",
        default=os.environ.get("OTA_BROKER_URL") or DEFAULT_BROKER_URL,
        help="MQTT broker (default: $OTA_BROKER_URL or %(default)s)",
    )
    where.add_argument("--http", default=DEFAULT_HTTP_URL, help="HTTP base (default %(default)s)")
    where.add_argument("--public-key", type=Path, default=DEFAULT_PUBLIC_KEY)
    trust = where.add_mutually_exclusive_group()
    trust.add_argument("--offer-keys", type=Path, metavar="FILE", help="pinned offer keys")
    trust.add_argument(
        "--insecure-unsealed",
        action="store_true",
        help="INSECURE: accept offers without a signed envelope",
    )
    where.add_argument("--keys-url", help="default <--http>/keys")
    where.add_argument("--topic-prefix", default="ota/v1")
    where.add_argument("--protocol", choices=PROTOCOLS, default="auto")
    where.add_argument("--timeout", type=float, default=10.0, help="per wait (default 10 s)")
    where.add_argument(
        "--install-dir",
        type=Path,
        help="keep each device's packages and state.json in DIR/<device_id> "
        "(default: verify downloads and keep nothing)",
    )
    how = parser.add_argument_group("simulation")
    how.add_argument("--mode", choices=("announce", "listen"), default="announce")
    how.add_argument(
        "--no-announce", action="store_true", help="listen mode: do not announce at start"
    )
    how.add_argument(
        "--duration",
        type=float,
        help="announce: give up after S seconds (default 60); listen: stop after S seconds "
        "(default: until Ctrl-C)",
    )
    how.add_argument(
        "--no-download",
        action="store_true",
        help="BENCHMARKS ONLY: verify offers but skip downloads (size and SHA-256 unchecked)",
    )
    how.add_argument(
        "--fail-devices", default="", help="comma-separated device ids that fail to install"
    )
    how.add_argument(
        "--fail-fraction",
        type=float,
        default=0.0,
        help="fraction of devices (picked by a hash of the id) that fail to install",
    )
    how.add_argument("--fail-seed", default="fleet", help="changes which ids the fraction picks")
    how.add_argument(
        "--one-connection-many-ids",
        action="store_true",
        help="BENCHMARKS ONLY: one MQTT connection for every device id; needs a broker "
        "WITHOUT per-device ACLs",
    )
    how.add_argument(
        "--loop-threads",
        type=int,
        default=1,
        help="MQTT network threads shared by all devices (0: one paho thread per device, "
        "for comparison)",
    )
    how.add_argument("--workers", type=int, default=8, help="verify/download/install threads")
    how.add_argument(
        "--http-connections", type=int, default=8, help="concurrent connections per HTTP host"
    )
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    out.add_argument("--records", type=Path, help="write each device's record as JSON lines")
    out.add_argument("-v", "--verbose", action="store_true")


def _devices(args: argparse.Namespace) -> list[SimDevice]:
    if args.devices is None:
        if args.count < 1:
            raise InvalidInput("--count must be at least 1")
        return make_devices(
            args.count,
            build_id=args.build_id,
            version=args.device_version,
            prefix=args.id_prefix,
            hardware=args.hardware,
            channel=args.channel,
        )
    devices = []
    try:
        lines = args.devices.read_text().splitlines()
    except OSError as e:
        raise InvalidInput(f"cannot read {args.devices}: {e.strerror}") from e
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            password = data.get("mqtt_password")
            devices.append(
                SimDevice(
                    device_id=data["device_id"],
                    build_id=data["build_id"],
                    version=data["version"],
                    hardware=data.get("hardware"),
                    channel=data.get("channel"),
                    mqtt_username=data.get("mqtt_username")
                    or (data["device_id"] if password is not None else None),
                    mqtt_password=password,
                )
            )
        except (ValueError, KeyError, TypeError) as e:
            raise InvalidInput(f"{args.devices} line {number}: {e}") from e
    if not devices:
        raise InvalidInput(f"{args.devices} lists no devices")
    return devices


def config_from_args(args: argparse.Namespace) -> FleetConfig:
    devices = _devices(args)
    first = devices[0]
    template = DeviceConfig(
        device_id=first.device_id,
        build_id=first.build_id,
        version=first.version,
        broker_url=args.broker,
        http_base_url=args.http,
        public_key_path=args.public_key,
        offer_keys_path=args.offer_keys,
        keys_url=args.keys_url,
        insecure_unsealed=args.insecure_unsealed,
        topic_prefix=args.topic_prefix,
        protocol=args.protocol,
        timeout=args.timeout,
        install_dir=args.install_dir,
    )
    fail = frozenset(i.strip() for i in args.fail_devices.split(",") if i.strip())
    return FleetConfig(
        devices=tuple(devices),
        template=template,
        mode=args.mode,
        announce_first=not args.no_announce,
        connection="shared" if args.one_connection_many_ids else "per-device",
        download=not args.no_download,
        fail_devices=fail,
        fail_fraction=args.fail_fraction,
        fail_seed=args.fail_seed,
        loop_threads=args.loop_threads,
        workers=args.workers,
        http_connections=args.http_connections,
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        config = config_from_args(args)
        fleet = Fleet(config)
    except OtaError as e:
        print(f"ota fleet: {e.detail}", file=sys.stderr)
        return EXIT_USAGE
    stop = threading.Event()
    previous = _on_signals(stop)
    started = time.monotonic()
    done_after: float | None = None
    try:
        fleet.start()
        if config.mode == "announce":
            wait = 60.0 if args.duration is None else args.duration
            deadline = time.monotonic() + wait
            while not stop.is_set() and time.monotonic() < deadline:
                if fleet.wait(min(0.5, max(0.0, deadline - time.monotonic()))):
                    done_after = time.monotonic() - started
                    break
        else:
            stop.wait(args.duration)
        stats = fleet.stats()
    finally:
        fleet.close()
        _restore(previous)
    records = fleet.records
    summary = fleet.summary()
    unexpected = [
        r.device_id
        for r in records.values()
        if not (
            r.final in ("installed", "up-to-date")
            or (r.injected_failure and r.final == "install-failed")
            or (config.mode == "listen" and r.final is None)
        )
    ]
    result: dict[str, Any] = {
        "mode": config.mode,
        "outcomes": summary,
        "injected_failures": len(fleet.failing),
        "unexpected": len(unexpected),
        "seconds_to_done": round(done_after, 3) if done_after is not None else None,
        "stats": stats.to_dict(),
    }
    if args.records is not None:
        with args.records.open("w") as out:
            for record in records.values():
                out.write(json.dumps(record.to_dict(), sort_keys=True) + "\n")
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print(_human(result))
        for device_id in unexpected[:10]:
            record = records[device_id]
            last = record.outcomes[-1].message() if record.outcomes else record.final
            print(f"  {device_id}: {last}", file=sys.stderr)
    return EXIT_OK if not unexpected else EXIT_INCOMPLETE


def _human(result: dict[str, Any]) -> str:
    stats = result["stats"]
    outcomes = ", ".join(f"{count} {state}" for state, count in sorted(result["outcomes"].items()))
    done = result["seconds_to_done"]
    timing = f" in {done:.2f}s" if done is not None else ""
    return (
        f"{stats['devices']} devices ({result['mode']}): {outcomes}{timing}; "
        f"{result['injected_failures']} injected failures, {result['unexpected']} unexpected. "
        f"{stats['mqtt_connections']} MQTT connections, {stats['threads']} threads, "
        f"{stats['cpu_seconds']:.2f}s CPU, {stats['max_rss_mb']:.0f} MB RSS, "
        f"{stats['http_connections_opened']} HTTP connections for "
        f"{stats['http_requests']} requests"
    )


def _on_signals(stop: threading.Event) -> dict[int, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum: int, frame: object) -> None:
        stop.set()

    return {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}


def _restore(previous: dict[int, Any]) -> None:
    for sig, old in previous.items():
        signal.signal(sig, old)
