#!/usr/bin/env python3
"""Make a DEVELOPMENT certificate authority, a Mosquitto server certificate and device
client certificates, for the TLS listener on 8883 (mosquitto.conf, "TLS listener").

    .venv/bin/python scripts/make_dev_ca.py certs --device dev-0001 --device dev-0002
    .venv/bin/python scripts/make_dev_ca.py certs --server-name mqtt.example.net

Writes, never overwriting an existing file (so re-running adds devices with the same CA):

    OUT/ca.crt  OUT/ca.key             the CA (ca.key stays on the provisioning machine)
    OUT/server.crt  OUT/server.key     Mosquitto's certificate: localhost, mosquitto,
                                       127.0.0.1, ::1 and every --server-name
    OUT/devices/ID.crt  ID.key         one per --device; CN = the device id, which
                                       Mosquitto uses as the username (ACL %u)

Keys are EC P-256, PEM (PKCS#8), mode 0600. Mosquitto needs ca.crt, server.crt and
server.key; a device needs ca.crt, ID.crt and ID.key. For production use your own PKI:
this CA key is an unencrypted file, and whoever holds it can mint a certificate for any
device id. Needs the `cryptography` package (installed in the project's venv).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import re
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# The same rule as ota_core.identifiers.check_device_id (kept here so the script runs
# without the project installed): the CN becomes an MQTT username and a topic level.
DEVICE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
RESERVED = {"ota-bridge", "ota-monitor"}
DEFAULT_SERVER_NAMES = ("localhost", "mosquitto")
DEFAULT_SERVER_IPS = ("127.0.0.1", "::1")
CA_DAYS = 3650


def _write_private(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(cert.public_bytes(serialization.Encoding.PEM))


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "OTA development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _now() -> datetime.datetime:
    # A minute in the past, so a machine with a slightly slow clock accepts it at once.
    return datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=1)


def load_or_make_ca(out: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key_path, cert_path = out / "ca.key", out / "ca.crt"
    if key_path.exists() and cert_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise SystemExit(f"{key_path} is not an EC key made by this script")
        return key, x509.load_pem_x509_certificate(cert_path.read_bytes())
    if key_path.exists() or cert_path.exists():
        raise SystemExit(f"only one of {key_path} and {cert_path} exists; add or remove the other")
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("OTA development CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now())
        .not_valid_after(_now() + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(key_path, key)
    _write_cert(cert_path, cert)
    print(f"created {cert_path} and {key_path} (keep ca.key off the broker)")
    return key, cert


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    common_name: str,
    days: int,
    usage: x509.ObjectIdentifier,
    alt_names: list[x509.GeneralName],
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now())
        .not_valid_after(_now() + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def make_server(
    out: Path,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    names: list[str],
    days: int,
) -> None:
    key_path, cert_path = out / "server.key", out / "server.crt"
    if key_path.exists() or cert_path.exists():
        print(f"kept the existing {cert_path}")
        return
    alt: list[x509.GeneralName] = [x509.DNSName(n) for n in dict.fromkeys(names)]
    alt += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in DEFAULT_SERVER_IPS]
    key, cert = _leaf(ca_key, ca_cert, names[0], days, ExtendedKeyUsageOID.SERVER_AUTH, alt)
    _write_private(key_path, key)
    _write_cert(cert_path, cert)
    print(f"created {cert_path} for {', '.join(dict.fromkeys(names))}, 127.0.0.1, ::1")


def make_device(
    out: Path,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    device_id: str,
    days: int,
) -> None:
    if not DEVICE_ID.fullmatch(device_id) or device_id in RESERVED:
        raise SystemExit(
            f"{device_id!r} is not a device id (1-64 of [A-Za-z0-9._-], not a service user)"
        )
    folder = out / "devices"
    folder.mkdir(exist_ok=True)
    key_path, cert_path = folder / f"{device_id}.key", folder / f"{device_id}.crt"
    if key_path.exists() or cert_path.exists():
        print(f"kept the existing {cert_path}")
        return
    key, cert = _leaf(ca_key, ca_cert, device_id, days, ExtendedKeyUsageOID.CLIENT_AUTH, [])
    _write_private(key_path, key)
    _write_cert(cert_path, cert)
    print(f"created {cert_path} (CN={device_id})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Development CA, Mosquitto server certificate and device certificates."
    )
    parser.add_argument("out", type=Path, help="output folder (created if missing)")
    parser.add_argument(
        "--server-name",
        action="append",
        default=[],
        help="another DNS name for the server certificate (repeatable)",
    )
    parser.add_argument(
        "--device", action="append", default=[], help="make a client certificate (repeatable)"
    )
    parser.add_argument("--days", type=int, default=825, help="leaf validity (default 825)")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = load_or_make_ca(out)
    make_server(out, ca_key, ca_cert, [*DEFAULT_SERVER_NAMES, *args.server_name], args.days)
    for device_id in args.device:
        make_device(out, ca_key, ca_cert, device_id, args.days)
    return 0


if __name__ == "__main__":
    sys.exit(main())
