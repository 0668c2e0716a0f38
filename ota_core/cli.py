"""The ``ota`` command: composition root for every service and admin task.

Service modules (bridge, HTTP side, embedded broker, device client) are imported
inside the subcommands that need them, so ``ota release list`` stays fast and the
domain core never depends on the edges at import time.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ota_core.errors import OtaError, PortInUse
from ota_core.keyfiles import (
    ensure_offer_key,
    ensure_release_keys,
    load_signer,
    published_offer_keys,
    rotate_offer_key,
)
from ota_core.logs import configure_logging
from ota_core.settings import Settings

log = logging.getLogger("ota")

EXIT_ERROR = 1
EXIT_USAGE = 2


def _setting_flags(parser: argparse.ArgumentParser, *, listen: bool, broker: bool) -> None:
    """Flags that override OTA_* environment settings; unset flags leave the env alone."""
    group = parser.add_argument_group("settings (each also readable from OTA_<NAME>)")
    if listen:
        group.add_argument("--host", help="address to bind (OTA_HOST, default 127.0.0.1)")
        group.add_argument("--http-port", type=int, help="HTTP port (OTA_HTTP_PORT, default 8000)")
    if broker:
        group.add_argument(
            "--broker-url", help="external broker, mqtt://host:port (OTA_BROKER_URL)"
        )
        group.add_argument("--mqtt-protocol", choices=["5", "3.1.1"], help="(OTA_MQTT_PROTOCOL)")
    group.add_argument(
        "--data-dir", type=Path, help="database folder (OTA_DATA_DIR, default data/)"
    )
    group.add_argument("--keys-dir", type=Path, help="key folder (OTA_KEYS_DIR, default keys/)")
    group.add_argument(
        "--packages-dir", type=Path, help="package folder (OTA_PACKAGES_DIR, default packages/)"
    )
    group.add_argument("--database-url", help="SQLAlchemy URL (OTA_DATABASE_URL)")


def load_settings(args: argparse.Namespace) -> Settings:
    names = (
        "host",
        "http_port",
        "http_workers",
        "mqtt_port",
        "broker_url",
        "mqtt_protocol",
        "data_dir",
        "keys_dir",
        "packages_dir",
        "database_url",
        "replicas_group",
        "metrics_port",
    )
    overrides: dict[str, Any] = {
        name: getattr(args, name) for name in names if getattr(args, name, None) is not None
    }
    return Settings(**overrides)


def check_port_free(
    host: str, port: int, what: str, env_name: str, flag: str, suggestion: int
) -> None:
    """Fail early and plainly when a port is taken, instead of a traceback later."""
    if suggestion == port:
        suggestion += 1
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            in_use = e.errno == errno.EADDRINUSE
            reason = "is already in use" if in_use else f"cannot be used ({e.strerror})"
            raise PortInUse(
                f"{what} port {port} on {host} {reason}. Pick another with {env_name}, "
                f"for example `{env_name}={suggestion} make run`, or `ota ... {flag} {suggestion}`."
            ) from e


def _configure_logging(settings: Settings) -> None:
    configure_logging(settings.log_level, settings.log_format)


def _prepare_keys(settings: Settings) -> None:
    created, key_id = ensure_release_keys(settings.keys_dir)
    if created:
        print(f"Generated a development release key in {settings.keys_dir}/ (key_id {key_id})")
    created, key_id = ensure_offer_key(settings.keys_dir, load_signer(settings.keys_dir))
    if created:
        print(f"Generated an offer signing key in {settings.keys_dir}/ (key_id {key_id})")


# --- subcommands -----------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    _configure_logging(settings)
    embedded = settings.broker_url is None
    if embedded:
        # amqtt speaks MQTT 3.1.1 only.
        settings = settings.model_copy(update={"mqtt_protocol": "3.1.1"})
        # Before keys and database: the embedded broker's own check, with its message.
        from broker_bridge.embedded import check_port_free as check_broker_port_free

        check_broker_port_free(settings.host, settings.mqtt_port)
    check_port_free(
        settings.host, settings.http_port, "HTTP", "OTA_HTTP_PORT", "--http-port", 18000
    )
    _prepare_keys(settings)

    from ota_core.services import Services, resolve_admin_password

    password, generated = resolve_admin_password(settings)
    services = Services.from_settings(settings)
    try:
        asyncio.run(_run_all(settings, services, password, generated, embedded))
    finally:
        services.close()
    return 0


async def _run_all(
    settings: Settings, services: Any, password: str, generated: bool, embedded: bool
) -> None:
    from broker_bridge.bridge import Bridge
    from broker_bridge.embedded import EmbeddedBroker
    from http_files.app import create_app
    from http_files.server import GracefulServer, uvicorn_config

    broker = EmbeddedBroker(settings.host, settings.mqtt_port) if embedded else None
    if broker is not None:
        await broker.start()
    bridge = Bridge(settings, services)
    bridge.start()
    server = GracefulServer(
        uvicorn_config(
            create_app(services, password),
            host=settings.host,
            port=settings.http_port,
            log_level=settings.log_level.lower(),
            access_log=False,
        )
    )
    _print_banner(settings, password, generated, embedded)
    try:
        await server.serve()
    finally:
        await asyncio.to_thread(bridge.stop)
        if broker is not None:
            await broker.shutdown()


def _print_banner(settings: Settings, password: str, generated: bool, embedded: bool) -> None:
    http = f"http://{settings.host}:{settings.http_port}"
    mqtt = (
        f"mqtt://{settings.host}:{settings.mqtt_port} (embedded amqtt broker)"
        if embedded
        else f"{settings.broker_url} (external broker)"
    )
    where = (
        "generated, saved in " + str(settings.admin_password_file)
        if generated
        else (
            "from OTA_ADMIN_PASSWORD"
            if settings.admin_password
            else "saved in " + str(settings.admin_password_file)
        )
    )
    print(
        "\nOTA push-update broker is up\n"
        f"  MQTT broker : {mqtt}\n"
        f"  HTTP        : {http}   (API docs {http}/docs)\n"
        f"  Admin page  : {http}/admin/metadata   user admin, password {password}  ({where})\n"
        f"  Topics      : {settings.topic_prefix}/devices/<device_id>/announce|status|offer\n"
        "Stop with Ctrl-C.\n",
        flush=True,
    )


def cmd_bridge(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    _configure_logging(settings)
    from broker_bridge.bridge import Bridge
    from ota_core.services import Services

    services = Services.from_settings(settings)
    try:
        Bridge(settings, services).run_forever()
    finally:
        services.close()
    return 0


def cmd_http(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    _configure_logging(settings)
    check_port_free(
        settings.host, settings.http_port, "HTTP", "OTA_HTTP_PORT", "--http-port", 18000
    )

    from http_files.app import create_app
    from http_files.server import GracefulServer, run_workers, uvicorn_config
    from ota_core.services import Services, resolve_admin_password

    password, generated = resolve_admin_password(settings)
    if generated:
        print(f"Admin password generated and saved in {settings.admin_password_file}: {password}")
    workers = settings.http_workers or os.cpu_count() or 1

    def serve(sockets: list[socket.socket] | None) -> None:
        services = Services.from_settings(settings)
        try:
            server = GracefulServer(
                uvicorn_config(
                    create_app(services, password),
                    host=settings.host,
                    port=settings.http_port,
                    log_level=settings.log_level.lower(),
                )
            )
            server.run(sockets=sockets)
        finally:
            services.close()

    if workers == 1:
        serve(None)
        return 0
    # Database migrations and the upload sweep once, before the workers fork (each
    # worker then opens its own connections).
    Services.from_settings(settings).close()
    print(f"Serving HTTP with {workers} worker processes (OTA_HTTP_WORKERS)", flush=True)
    return run_workers(workers, lambda sock: serve([sock]), settings.host, settings.http_port)


def cmd_keygen(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    created, key_id = ensure_release_keys(settings.keys_dir)
    state = "Created" if created else "Kept the existing"
    print(f"{state} release key pair in {settings.keys_dir}/ (RSA, key_id {key_id})")
    created, key_id = ensure_offer_key(settings.keys_dir, load_signer(settings.keys_dir))
    state = "Created" if created else "Kept the existing"
    print(f"{state} offer key in {settings.keys_dir}/ (Ed25519, key_id {key_id})")
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    grace = settings.offer_key_grace_seconds if args.grace_seconds is None else args.grace_seconds
    new_id, retired = rotate_offer_key(settings.keys_dir, load_signer(settings.keys_dir), grace)
    print(f"New current offer key {new_id}.")
    for key_id in retired:
        print(f"Offer key {key_id} retired: still verifiable for {grace} s, private half deleted.")
    print("Running bridges pick the new key up within a second; GET /keys lists both.")
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    signer = load_signer(settings.keys_dir)
    print(f"release  {signer.key_id}  RSA-2048  {settings.keys_dir / 'public.pem'}")
    for entry in published_offer_keys(settings.keys_dir):
        status, until = entry["status"], entry["not_after"]
        print(f"offer    {entry['key_id']}  Ed25519   {status}, valid until {until}")
    return 0


def _release_service(args: argparse.Namespace) -> Any:
    from ota_core.services import Services

    return Services.from_settings(load_settings(args))


def cmd_release_add(args: argparse.Namespace) -> int:
    from ota_core.package_files import read_chunks
    from ota_core.releases import ReleaseRequest

    services = _release_service(args)
    try:
        source: Path = args.file
        request = ReleaseRequest(
            build_id=args.build_id,
            version=args.version,
            filename=args.filename or source.name,
            hardware=args.hardware,
            channel=args.channel,
            notes=args.notes,
        )
        packages_root = services.packages.root.resolve()
        if source.resolve().parent == packages_root and request.filename == source.name:
            release = services.releases.add_existing(request)
        else:
            try:
                stream = source.open("rb")
            except OSError as e:
                raise OtaError(f"cannot read {source}: {e.strerror}") from e
            with stream:
                release = services.releases.add_upload(
                    request, read_chunks(stream), services.settings.max_upload_bytes
                )
    finally:
        services.close()
    print(
        f"Published {release.build_id} version {release.version} ({release.filename}, "
        f"{release.size} bytes, sha256 {release.sha256[:16]}…, counter {release.release_counter})"
    )
    return 0


def cmd_release_list(args: argparse.Namespace) -> int:
    services = _release_service(args)
    try:
        catalog = services.releases.catalog()
    finally:
        services.close()
    if args.json:
        print(json.dumps([r.model_dump(mode="json") for r in catalog], indent=2))
        return 0
    if not len(catalog):
        print("No releases.")
        return 0
    print(f"{'BUILD ID':<20} {'VERSION':<12} {'FILENAME':<28} {'SIZE':>10}  HARDWARE/CHANNEL")
    for r in catalog:
        scope = f"{r.hardware or '*'}/{r.channel or '*'}"
        print(f"{r.build_id:<20} {r.version:<12} {r.filename:<28} {r.size:>10}  {scope}")
    return 0


def cmd_release_delete(args: argparse.Namespace) -> int:
    services = _release_service(args)
    try:
        release = services.releases.delete(args.build_id, delete_file=args.delete_file)
    finally:
        services.close()
    kept = "deleted" if args.delete_file else "kept"
    print(f"Deleted release {release.build_id} (package file {release.filename} {kept})")
    return 0


def cmd_import_metadata(args: argparse.Namespace) -> int:
    try:
        data = json.loads(args.file.read_text())
    except (OSError, ValueError) as e:
        raise OtaError(f"cannot read {args.file} as JSON: {e}") from e
    if not isinstance(data, dict):
        raise OtaError(f"{args.file} must hold a JSON object of build_id → {{version, filename}}")
    services = _release_service(args)
    try:
        added, problems = services.releases.import_metadata(data)
    finally:
        services.close()
    for release in added:
        print(f"imported {release.build_id} {release.version} ({release.filename})")
    for problem in problems:
        print(f"skipped {problem}", file=sys.stderr)
    return 0 if not problems else EXIT_ERROR


def cmd_export_metadata(args: argparse.Namespace) -> int:
    from ota_core.releases import export_metadata

    services = _release_service(args)
    try:
        print(json.dumps(export_metadata(services.releases.catalog()), indent=2, sort_keys=True))
    finally:
        services.close()
    return 0


def cmd_device(args: argparse.Namespace) -> int:
    from ota_core.device import command

    return command.run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ota", description="MQTT push-update broker for IoT fleets."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="everything in one process: embedded broker, bridge, HTTP")
    _setting_flags(run, listen=True, broker=True)
    run.add_argument(
        "--mqtt-port", type=int, help="embedded broker port (OTA_MQTT_PORT, default 1883)"
    )
    run.set_defaults(func=cmd_run)

    bridge = sub.add_parser("bridge", help="the MQTT bridge only, against OTA_BROKER_URL")
    _setting_flags(bridge, listen=False, broker=True)
    bridge.add_argument(
        "--replicas-group",
        metavar="NAME",
        help="share announcements with the other bridges of this group through an MQTT 5 "
        "shared subscription (OTA_REPLICAS_GROUP); give each its own OTA_MQTT_CLIENT_ID",
    )
    bridge.add_argument(
        "--metrics-port", type=int, help="serve Prometheus /metrics here (OTA_METRICS_PORT)"
    )
    bridge.set_defaults(func=cmd_bridge)

    http = sub.add_parser("http", help="the HTTP side only: downloads, device REST, admin")
    _setting_flags(http, listen=True, broker=False)
    http.add_argument(
        "--http-workers",
        type=int,
        metavar="N",
        help="worker processes sharing the port (OTA_HTTP_WORKERS, default 1; 0: one per CPU)",
    )
    http.set_defaults(func=cmd_http)

    keygen = sub.add_parser("keygen", help="create the release signing key pair if missing")
    _setting_flags(keygen, listen=False, broker=False)
    keygen.set_defaults(func=cmd_keygen)

    keys = sub.add_parser("keys", help="inspect and rotate signing keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    rotate = ksub.add_parser(
        "rotate", help="add a new offer key; keep the old one for a grace period"
    )
    rotate.add_argument(
        "--grace-seconds", type=int, help="(default OTA_OFFER_KEY_GRACE_SECONDS, 7 days)"
    )
    _setting_flags(rotate, listen=False, broker=False)
    rotate.set_defaults(func=cmd_keys_rotate)
    klist = ksub.add_parser("list", help="show the release key and the published offer keys")
    _setting_flags(klist, listen=False, broker=False)
    klist.set_defaults(func=cmd_keys_list)

    release = sub.add_parser("release", help="manage releases")
    rsub = release.add_subparsers(dest="release_command", required=True, metavar="ACTION")
    add = rsub.add_parser("add", help="publish a package file as a release")
    add.add_argument("file", type=Path, help="the package file (copied into the packages folder)")
    add.add_argument("--version", required=True)
    add.add_argument("--build-id", required=True)
    add.add_argument("--filename", help="name in the packages folder (default: the file's name)")
    add.add_argument("--hardware")
    add.add_argument("--channel")
    add.add_argument("--notes")
    _setting_flags(add, listen=False, broker=False)
    add.set_defaults(func=cmd_release_add)
    lst = rsub.add_parser("list", help="list releases, newest first")
    lst.add_argument("--json", action="store_true")
    _setting_flags(lst, listen=False, broker=False)
    lst.set_defaults(func=cmd_release_list)
    delete = rsub.add_parser("delete", help="remove a release from the catalog")
    delete.add_argument("build_id")
    delete.add_argument("--delete-file", action="store_true", help="also remove the package file")
    _setting_flags(delete, listen=False, broker=False)
    delete.set_defaults(func=cmd_release_delete)

    imp = sub.add_parser("import-metadata", help="import the seed's metadata.json")
    imp.add_argument("file", type=Path)
    _setting_flags(imp, listen=False, broker=False)
    imp.set_defaults(func=cmd_import_metadata)

    exp = sub.add_parser("export-metadata", help="print the catalog as the seed's metadata.json")
    _setting_flags(exp, listen=False, broker=False)
    exp.set_defaults(func=cmd_export_metadata)

    device = sub.add_parser("device", help="reference device client: announce, verify, install")
    try:
        from ota_core.device import command as device_command
    except ImportError:  # the device package is optional at import time
        device_command = None  # type: ignore[assignment]
    if device_command is not None:
        device_command.add_arguments(device)
    device.set_defaults(func=cmd_device)
    fleet = sub.add_parser("fleet", help="simulate many devices in one process (tests, benchmarks)")
    from ota_core.device import fleet_command

    fleet_command.add_arguments(fleet)
    fleet.set_defaults(func=fleet_command.run)

    from ota_core import mqtt_users

    mqtt_user = sub.add_parser(
        "mqtt-user", help="Mosquitto users: one per device, plus the bridge (password file)"
    )
    mqtt_users.add_arguments(mqtt_user)
    mqtt_user.set_defaults(func=mqtt_users.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except ValidationError as e:
        print(f"ota: invalid setting: {e}", file=sys.stderr)
        return EXIT_USAGE
    except PortInUse as e:
        print(f"ota: {e.detail}", file=sys.stderr)
        return EXIT_USAGE
    except OtaError as e:
        print(f"ota: {e.detail}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
