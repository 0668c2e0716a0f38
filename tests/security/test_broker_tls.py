"""Device certificates on the shipped TLS listener (mosquitto.conf's TLS block, enabled).

The broker runs the repo's conf with that block switched on the way an operator does it,
with certificates from scripts/make_dev_ca.py (``dev_ca``). A device logs in with its
certificate alone: Mosquitto takes the CN as the username, so the same ACL patterns keep
it to its own topics, and a real bridge on the password listener answers it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from paho.mqtt.enums import MQTTProtocolVersion

from ota_core.mqtt_users import BRIDGE_USER
from ota_core.topics import TopicKind
from tests.conftest import SECURE_TEST_DEVICES
from tests.security.harness import (
    NEW_BUILD,
    NEW_VERSION,
    OLD_BUILD,
    announcement,
    device_tls_context,
    fresh_request_id,
    secure_rig,
)
from tests.support import REPO_ROOT, MosquittoServer, OtaDirs, connack

A, B, C = SECURE_TEST_DEVICES


def tls_url(broker: MosquittoServer) -> str:
    return f"mqtts://{broker.host}:{broker.tls_port}"


def test_certificate_login_uses_the_cn_as_username_and_the_acl_applies(
    tls_mosquitto: MosquittoServer, ota_dirs: OtaDirs, dev_ca: Path
) -> None:
    with secure_rig(ota_dirs, tls_mosquitto) as rig:
        offers = str(rig.settings.topics.filter(TopicKind.OFFER))
        a = rig.tls_device(A, dev_ca, listen=offers)  # snoops on every offer topic
        b = rig.device(B)  # password login on the plain listener, as before
        # Username = CN, and the client id the device chose is replaced by it.
        assert f"as {A} (p2, c1, k30, u'{A}')" in tls_mosquitto.log_text()

        b.expect_update(fresh_request_id("b-1"))
        spoof = announcement(fresh_request_id("spoofed-by-a"), NEW_BUILD, NEW_VERSION)
        a.publish(a.announce_topic(B), spoof)
        offer = a.expect_update(fresh_request_id("a-1"))  # first message: its own offer
        assert offer.device_id == A
        record = rig.services.registry.get(B) if rig.registry_has(B) else None
        assert record is not None and record.build_id == OLD_BUILD, "A's spoof was recorded"
        b.expect_update(fresh_request_id("b-2"))  # not an answer to A's spoof
        assert not a.has_pending() and not b.has_pending()
        assert rig.bridge.stats.snapshot()["announcements"] == 3


def test_tls_listener_refuses_clients_without_a_trusted_certificate(
    tls_mosquitto: MosquittoServer, dev_ca: Path, tmp_path: Path
) -> None:
    url, creds = tls_url(tls_mosquitto), tls_mosquitto.credentials
    # A password is no substitute for a certificate on this listener.
    no_cert = connack(url, username=A, password=creds[A], tls=device_tls_context(dev_ca, None))
    assert no_cert.startswith("no CONNACK"), no_cert
    # A certificate from another CA (same script, another run) is refused too.
    rogue = tmp_path / "rogue-ca"
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "make_dev_ca.py"), str(rogue), "--device", A],
        check=True,
        capture_output=True,
        timeout=60,
    )
    trust_ours = device_tls_context(dev_ca, None)
    trust_ours.load_cert_chain(rogue / "devices" / f"{A}.crt", rogue / "devices" / f"{A}.key")
    assert connack(url, tls=trust_ours).startswith("no CONNACK")
    # The genuine certificate works, over MQTT 3.1.1 and 5.
    for protocol in (MQTTProtocolVersion.MQTTv311, MQTTProtocolVersion.MQTTv5):
        assert connack(url, tls=device_tls_context(dev_ca, A), protocol=protocol) == "Success"
    # The certificate is the identity: the bridge's username and password sent along with
    # A's certificate still log in as A (and so get A's rights only).
    seen_as_a = tls_mosquitto.log_text().count(f"u'{A}')")
    assert (
        connack(
            url,
            username=BRIDGE_USER,
            password=creds[BRIDGE_USER],
            tls=device_tls_context(dev_ca, A),
        )
        == "Success"
    )
    assert tls_mosquitto.log_text().count(f"u'{A}')") == seen_as_a + 1
    assert "u'ota-bridge'" not in tls_mosquitto.log_text()


def test_dev_ca_script_never_overwrites_and_refuses_bad_device_ids(tmp_path: Path) -> None:
    script = [sys.executable, str(REPO_ROOT / "scripts" / "make_dev_ca.py"), str(tmp_path / "c")]
    subprocess.run([*script, "--device", A], check=True, capture_output=True, timeout=60)
    ca_before = (tmp_path / "c" / "ca.crt").read_bytes()
    device_before = (tmp_path / "c" / "devices" / f"{A}.crt").read_bytes()
    subprocess.run(
        [*script, "--device", A, "--device", B], check=True, capture_output=True, timeout=60
    )
    assert (tmp_path / "c" / "ca.crt").read_bytes() == ca_before
    assert (tmp_path / "c" / "devices" / f"{A}.crt").read_bytes() == device_before
    assert (tmp_path / "c" / "devices" / f"{B}.crt").exists()
    for private in ("ca.key", "server.key", f"devices/{B}.key"):
        assert (tmp_path / "c" / private).stat().st_mode & 0o777 == 0o600
    for bad in ("a/b", "+", "#", "ota-bridge", ""):
        result = subprocess.run(
            [*script, "--device", bad], capture_output=True, text=True, timeout=60
        )
        assert result.returncode != 0, bad
