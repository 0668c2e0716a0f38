"""One settings class for every service, read from ``OTA_*`` environment variables.

CLI flags override the environment (``ota run --http-port 18000`` equals
``OTA_HTTP_PORT=18000``). Paths are relative to the working directory.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ota_core.models import MAX_MESSAGE_BYTES
from ota_core.topics import DEFAULT_PREFIX, TopicScheme

#: Passwords nobody may deploy with.
PLACEHOLDER_SECRETS = frozenset(
    {"changeme", "change-me", "changethis", "admin", "password", "secret"}
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OTA_", extra="ignore")

    # Where things listen.
    host: str = Field("127.0.0.1", description="address the embedded broker and HTTP side bind to")
    mqtt_port: int = Field(1883, ge=1, le=65535, description="embedded broker port")
    http_port: int = Field(8000, ge=1, le=65535)
    http_workers: int = Field(
        1,
        ge=0,
        description="`ota http` worker processes sharing the HTTP port (SO_REUSEPORT); "
        "0: one per CPU. Each has its own /metrics counters.",
    )
    # When set, connect to this broker and start no embedded one: mqtt://host:port.
    broker_url: str | None = None
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    mqtt_client_id: str = "ota-bridge"
    # MQTT protocol the bridge speaks to an external broker: "5" or "3.1.1".
    mqtt_protocol: str = "5"
    topic_prefix: str = DEFAULT_PREFIX
    # Scale-out: bridges sharing this name split announcements through an MQTT 5
    # shared subscription ($share/<name>/...). Each replica needs its own client id.
    replicas_group: str | None = None
    # The bridge serves Prometheus metrics on this port when set (the HTTP side
    # always serves them at GET /metrics).
    metrics_port: int | None = Field(None, ge=1, le=65535)

    # Folders.
    data_dir: Path = Path("data")
    keys_dir: Path = Path("keys")
    packages_dir: Path = Path("packages")
    database_url: str | None = None

    # Admin.
    admin_password: SecretStr | None = None
    max_upload_bytes: int = Field(512 * 1024 * 1024, ge=1)

    # Devices.
    max_message_bytes: int = Field(MAX_MESSAGE_BYTES, ge=256)
    package_base_url: str = ""
    offer_ttl_seconds: int = Field(24 * 3600, ge=60, description="validity of a signed offer")
    offer_key_grace_seconds: int = Field(
        7 * 24 * 3600, ge=0, description="how long a rotated-out offer key stays verifiable"
    )
    catalog_poll_seconds: float = Field(
        0.05, gt=0, description="how often the bridge checks the catalog revision (push wake-up)"
    )

    # Push and rollouts (the bridge).
    push_rate: float = Field(
        math.inf,
        ge=0,
        description="offers per second the bridge pushes to known devices at most; "
        "inf (the default): as fast as the broker takes them; 0: no push",
    )
    rollout_check_seconds: float = Field(
        1.0, gt=0, description="how often the bridge checks rollouts (auto-pause, auto-advance)"
    )
    # Flood protection (the bridge): a token bucket per device over announce + status.
    device_rate_limit: float = Field(
        2.0, ge=0, description="messages per second one device may sustain; 0: no limit"
    )
    device_rate_burst: int = Field(
        20, ge=1, description="messages one device may send at once before the limit applies"
    )
    reply_cache_seconds: float = Field(
        30.0, ge=0, description="how long a duplicate announcement gets the same reply; 0: off"
    )
    registry_writer: Literal["process", "thread"] = Field(
        "process",
        description="where the bridge writes the device registry behind its MQTT thread: "
        "a child process (default: the MQTT thread keeps the GIL) or a thread",
    )
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"

    @field_validator("admin_password")
    @classmethod
    def _refuse_placeholder(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            secret = value.get_secret_value()
            if secret.lower() in PLACEHOLDER_SECRETS or len(secret) < 8:
                raise ValueError(
                    "OTA_ADMIN_PASSWORD is a placeholder or shorter than 8 characters; "
                    "set a real one or leave it unset to have one generated"
                )
        return value

    @field_validator("mqtt_protocol")
    @classmethod
    def _known_protocol(cls, value: str) -> str:
        if value not in {"5", "3.1.1"}:
            raise ValueError("OTA_MQTT_PROTOCOL must be 5 or 3.1.1")
        return value

    @field_validator("replicas_group")
    @classmethod
    def _valid_group(cls, value: str | None) -> str | None:
        # A share name is one topic level: no separators or wildcards.
        if value is not None and (any(c in value for c in "/+#") or len(value) > 64):
            raise ValueError("OTA_REPLICAS_GROUP must be one topic level: no / + # (max 64)")
        return value or None

    @field_validator("broker_url")
    @classmethod
    def _valid_broker_url(cls, value: str | None) -> str | None:
        if value:
            parts = urlsplit(value)
            if parts.scheme not in {"mqtt", "mqtts", "tcp"} or not parts.hostname:
                raise ValueError("OTA_BROKER_URL must look like mqtt://host:1883")
        return value or None

    @property
    def topics(self) -> TopicScheme:
        return TopicScheme(self.topic_prefix)

    @property
    def resolved_database_url(self) -> str:
        """SQLAlchemy URL; plain ``postgresql://`` URLs use the psycopg 3 driver we ship."""
        if self.database_url:
            for plain in ("postgresql://", "postgres://"):
                if self.database_url.startswith(plain):
                    return "postgresql+psycopg://" + self.database_url.removeprefix(plain)
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'ota.sqlite3').resolve()}"

    @property
    def admin_password_file(self) -> Path:
        return self.data_dir / "admin-password"

    @property
    def effective_broker_url(self) -> str:
        """The broker the bridge talks to: the external one, or the embedded one."""
        if self.broker_url:
            return self.broker_url
        host = "127.0.0.1" if self.host in {"0.0.0.0", "::"} else self.host
        return f"mqtt://{host}:{self.mqtt_port}"
