"""Per-test OTA folders (keys, packages, data) and Settings pointing at them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ota_core.keyfiles import (
    PRIVATE_KEY_NAME,
    PUBLIC_KEY_NAME,
    ensure_release_keys,
    write_private_file,
)
from ota_core.settings import Settings
from tests.support.ports import free_port

#: A valid (non-placeholder, >= 8 characters) admin password for tests.
TEST_ADMIN_PASSWORD = "test-admin-pw-7f3c9a"


@dataclass(frozen=True)
class ReleaseKeyPems:
    """One release key pair per test session: RSA key generation is the slow part."""

    private_pem: bytes
    public_pem: bytes
    key_id: str

    @classmethod
    def generate(cls, folder: Path) -> ReleaseKeyPems:
        _, key_id = ensure_release_keys(folder)
        return cls(
            (folder / PRIVATE_KEY_NAME).read_bytes(),
            (folder / PUBLIC_KEY_NAME).read_bytes(),
            key_id,
        )

    def install(self, keys_dir: Path) -> str:
        """Copy the pair into ``keys_dir`` (private key 0600) and return its key_id."""
        write_private_file(keys_dir / PRIVATE_KEY_NAME, self.private_pem)
        (keys_dir / PUBLIC_KEY_NAME).write_bytes(self.public_pem)
        # Loads the copied key back the way every service does, proving the folder is usable.
        _, key_id = ensure_release_keys(keys_dir)
        if key_id != self.key_id:
            raise AssertionError(f"copied key has key_id {key_id}, expected {self.key_id}")
        return key_id


@dataclass(frozen=True)
class OtaDirs:
    root: Path
    keys_dir: Path
    packages_dir: Path
    data_dir: Path
    key_id: str
    admin_password: str = TEST_ADMIN_PASSWORD

    @classmethod
    def create(cls, root: Path, keys: ReleaseKeyPems) -> OtaDirs:
        keys_dir, packages_dir, data_dir = root / "keys", root / "packages", root / "data"
        for folder in (keys_dir, packages_dir, data_dir):
            folder.mkdir(parents=True, exist_ok=True)
        return cls(root, keys_dir, packages_dir, data_dir, keys.install(keys_dir))

    @property
    def public_key_path(self) -> Path:
        return self.keys_dir / PUBLIC_KEY_NAME

    def settings(self, **overrides: Any) -> Settings:
        """Settings for these folders, fresh free ports and the test admin password.

        Everything is passed as init arguments (and no .env file is read), so a developer's
        OTA_* environment cannot leak in; ``overrides`` win over the defaults here.
        """
        values: dict[str, Any] = {
            "keys_dir": self.keys_dir,
            "packages_dir": self.packages_dir,
            "data_dir": self.data_dir,
            "host": "127.0.0.1",
            "mqtt_port": free_port(),
            "http_port": free_port(),
            "admin_password": self.admin_password,
            "broker_url": None,
            "log_level": "DEBUG",
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)

    def env(self, **overrides: str) -> dict[str, str]:
        """``OTA_*`` variables for these folders, for tests that start ``ota`` as a process
        (merge into a copy of ``os.environ``); keys are upper-cased setting names."""
        values = {
            "OTA_KEYS_DIR": str(self.keys_dir),
            "OTA_PACKAGES_DIR": str(self.packages_dir),
            "OTA_DATA_DIR": str(self.data_dir),
            "OTA_HOST": "127.0.0.1",
            "OTA_MQTT_PORT": str(free_port()),
            "OTA_HTTP_PORT": str(free_port()),
            "OTA_ADMIN_PASSWORD": self.admin_password,
        }
        values.update({f"OTA_{name.upper()}": value for name, value in overrides.items()})
        return values
