"""Shared test helpers: real brokers on free ports, per-test OTA folders.

The pytest fixtures built on these live in tests/conftest.py.
"""

from tests.support.amqtt_broker import AmqttServer, start_amqtt_broker
from tests.support.loop_thread import LoopThread, ThreadedService
from tests.support.mosquitto import (
    REPO_MOSQUITTO_ACL,
    REPO_MOSQUITTO_CONF,
    REPO_ROOT,
    MosquittoServer,
    add_mosquitto_user,
    find_mosquitto_tool,
    start_mosquitto,
    start_secure_mosquitto,
)
from tests.support.mqtt_probe import MqttProbe, connack
from tests.support.ota_dirs import TEST_ADMIN_PASSWORD, OtaDirs, ReleaseKeyPems
from tests.support.ports import free_port, port_accepts, wait_for_port

__all__ = [
    "REPO_MOSQUITTO_ACL",
    "REPO_MOSQUITTO_CONF",
    "REPO_ROOT",
    "TEST_ADMIN_PASSWORD",
    "AmqttServer",
    "LoopThread",
    "MosquittoServer",
    "MqttProbe",
    "OtaDirs",
    "ReleaseKeyPems",
    "ThreadedService",
    "add_mosquitto_user",
    "connack",
    "find_mosquitto_tool",
    "free_port",
    "port_accepts",
    "start_amqtt_broker",
    "start_mosquitto",
    "start_secure_mosquitto",
    "wait_for_port",
]
