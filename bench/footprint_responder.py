"""The start-up ceiling of bench/footprint.py: a do-nothing paho-mqtt responder, as a process.

usage: python bench/footprint_responder.py PORT PROTOCOL PREFIX PAYLOAD_BYTES

Python start-up, ``import paho``, connect with a persistent MQTT 5 session,
subscribe to every device's announce topic at QoS 1, and answer each
announcement with a same-size payload on the device's offer topic. Nothing
else is imported, so its start-up and RSS are the floor any Python bridge pays.
"""

from __future__ import annotations

import signal
import socket
import sys
import threading
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def main() -> None:
    port, protocol, prefix, size = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    payload = b"x" * size
    v5 = protocol == "5"
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"footprint-ceiling-{port}-{id(payload)}",
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        clean_session=None if v5 else False,
    )

    def nodelay(_c: Any, _u: Any, sock: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def on_connect(c: mqtt.Client, *_args: Any) -> None:
        c.subscribe(f"{prefix}/devices/+/announce", qos=1)

    def on_message(c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        device = message.topic.split("/")[-2]
        c.publish(f"{prefix}/devices/{device}/offer", payload, qos=1)

    client.on_socket_open = nodelay
    client.on_connect = on_connect
    client.on_message = on_message
    client.connect("127.0.0.1", port, clean_start=False if v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    client.loop_start()
    done.wait()
    client.disconnect()
    client.loop_stop()


if __name__ == "__main__":
    main()
