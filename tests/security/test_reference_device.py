"""The reference device client (``ota device``) on the locked-down broker."""

from __future__ import annotations

import time
from pathlib import Path

from ota_core.device.client import DeviceClient, DeviceConfig, OutcomeKind
from ota_core.keyfiles import OFFER_KEYRING_NAME
from tests.conftest import SECURE_TEST_DEVICES
from tests.security.harness import NEW_BUILD, OLD_BUILD, OLD_VERSION, WAIT, secure_rig
from tests.support import MosquittoServer, OtaDirs

A, B, _ = SECURE_TEST_DEVICES


def device_config(
    ota_dirs: OtaDirs, broker_url: str, tmp_path: Path, **extra: object
) -> DeviceConfig:
    values: dict[str, object] = {
        "device_id": A,
        "build_id": OLD_BUILD,
        "version": OLD_VERSION,
        "broker_url": broker_url,
        "public_key_path": ota_dirs.public_key_path,
        "offer_keys_path": ota_dirs.keys_dir / OFFER_KEYRING_NAME,
        "install_dir": tmp_path / "device",
        "download": False,  # the MQTT path only: no HTTP side in these tests
        "timeout": 5,
    }
    values.update(extra)
    return DeviceConfig(**values)  # type: ignore[arg-type]


def test_reference_client_is_offered_an_update_and_reports_status(
    secure_mosquitto: MosquittoServer, ota_dirs: OtaDirs, tmp_path: Path
) -> None:
    with secure_rig(ota_dirs, secure_mosquitto) as rig:
        config = device_config(ota_dirs, secure_mosquitto.url_for(A), tmp_path)
        outcome = DeviceClient(config).run_once()
        assert outcome.kind is OutcomeKind.INSTALLED, outcome
        assert outcome.offered_build_id == NEW_BUILD
        # Its status reports (its own status topic) reach the bridge's registry.
        deadline = time.monotonic() + WAIT
        while True:
            record = rig.services.registry.get(A) if rig.registry_has(A) else None
            if record is not None and record.last_state == "installed":
                break
            assert time.monotonic() < deadline, f"no installed status recorded: {record}"
            time.sleep(0.05)
        assert record.last_state_build == NEW_BUILD


def test_reference_client_with_another_devices_credentials_is_never_answered(
    secure_mosquitto: MosquittoServer, ota_dirs: OtaDirs, tmp_path: Path
) -> None:
    with secure_rig(ota_dirs, secure_mosquitto) as rig:
        # Device A's software with B's password: logged in as B, it may not use A's topics.
        config = device_config(ota_dirs, secure_mosquitto.url_for(B), tmp_path, timeout=2)
        outcome = DeviceClient(config).run_once()
        assert outcome.kind is OutcomeKind.TIMEOUT, outcome
        assert not rig.registry_has(A) and not rig.registry_has(B)
