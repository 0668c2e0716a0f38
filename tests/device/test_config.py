"""DeviceConfig validation and URL handling (pure, no network)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ota_core.device import DeviceConfig, DownloadFailed
from ota_core.device.client import parse_broker_url
from ota_core.device.download import package_url
from ota_core.errors import InvalidInput

BASE: dict[str, Any] = {"device_id": "dev-1", "build_id": "build-1001", "version": "1.1.0"}


def test_defaults_match_the_command_line_contract() -> None:
    config = DeviceConfig(**BASE)
    assert config.broker_url == "mqtt://127.0.0.1:1883"
    assert config.http_base_url == "http://127.0.0.1:8000"
    assert config.public_key_path == Path("keys/public.pem")
    assert config.topic_prefix == "ota/v1"
    assert config.protocol == "auto"
    assert config.persistent_session is False


def test_password_stays_out_of_repr() -> None:
    config = DeviceConfig(**BASE, mqtt_password="s3cret-pw")
    assert "s3cret-pw" not in repr(config)
    assert "s3cret-pw" not in repr(parse_broker_url("mqtt://u:s3cret-pw@h:1"))


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"device_id": "a/b"}, "device_id"),
        ({"device_id": "+"}, "device_id"),
        ({"build_id": "build #1"}, "build_id"),
        ({"hardware": "x" * 65}, "hardware"),
        ({"version": "latest"}, "not a version"),
        ({"broker_url": "http://host:1883"}, "mqtt://host:port"),
        ({"broker_url": "mqtt://host:99999"}, "bad port"),
        ({"protocol": "4"}, "protocol"),
        ({"timeout": 0}, "timeout"),
        ({"topic_prefix": "ota/#"}, "prefix"),
        ({"http_base_url": "ftp://h/"}, "http url"),
        ({"keys_url": "file:///keys.json"}, "keys url"),
        ({"insecure_unsealed": True, "offer_keys_path": Path("k.json")}, "contradict"),
    ],
)
def test_bad_settings_are_refused_clearly(change: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        DeviceConfig(**{**BASE, **change})


def test_broker_url_forms() -> None:
    assert parse_broker_url("mqtt://127.0.0.1").port == 1883
    address = parse_broker_url("tcp://user:pw@broker.example:1884")
    assert (address.host, address.port, address.username, address.password) == (
        "broker.example",
        1884,
        "user",
        "pw",
    )


@pytest.mark.parametrize(
    ("base", "offered", "expected"),
    [
        ("http://h:8000", "/packages/a.zip", "http://h:8000/packages/a.zip"),
        ("http://h:8000/", "/packages/a.zip", "http://h:8000/packages/a.zip"),
        ("http://h:8000/ota", "packages/a.zip", "http://h:8000/ota/packages/a.zip"),
        ("http://h:8000", "https://cdn.example/a.zip", "https://cdn.example/a.zip"),
    ],
)
def test_package_urls(base: str, offered: str, expected: str) -> None:
    assert package_url(base, offered) == expected


@pytest.mark.parametrize(
    "offered", ["file:///etc/passwd", "ftp://h/a.zip", "data:,hello", "javascript:x"]
)
def test_only_http_package_urls(offered: str) -> None:
    with pytest.raises(DownloadFailed, match="http or https"):
        package_url("http://h:8000", offered)


def test_keys_url_defaults_to_the_http_base() -> None:
    assert DeviceConfig(**BASE).resolved_keys_url == "http://127.0.0.1:8000/keys"
    config = DeviceConfig(**BASE, http_base_url="https://ota.example/base/")
    assert config.resolved_keys_url == "https://ota.example/base/keys"
    assert DeviceConfig(**BASE, keys_url="http://k/keys").resolved_keys_url == "http://k/keys"
