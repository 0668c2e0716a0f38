"""Load-generator processes: simulated devices announcing over real MQTT connections.

Each load process drives its share of the fleet with the device simulator's
network layer (:class:`ota_core.device.netloop.MqttLoop`: one epoll thread, many
paho clients, TCP_NODELAY), either

* ``per-device``: one MQTT connection per device id, each subscribed to its own
  ``{prefix}/devices/{id}/offer`` (what a real fleet looks like to the broker), or
* ``shared``: one connection publishing for all of the process's ids and
  subscribed to each of their offer topics (the simulator's
  one-connection-many-ids mode).

The parent talks to each process over a pipe: ``burst`` (publish a share of the
20,000 announcements as fast as paho takes them, count the answers), ``paced``
(publish at a fixed rate for a while, time each answer by its request id) and
``stop``. Announcements are QoS 1; answers are matched to requests by the
``request_id`` the bridge (and the do-nothing responder) echo, found with a byte
search so the load processes stay cheap.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from ota_core.device.netloop import MqttLoop

PREFIX = "ota/v1"
_RID = b'"request_id":'


def request_id_of(payload: bytes) -> str | None:
    """The ``request_id`` string value in a JSON reply, without parsing the JSON."""
    at = payload.find(_RID)
    if at < 0:
        return None
    start = payload.find(b'"', at + len(_RID))
    if start < 0:
        return None
    end = payload.find(b'"', start + 1)
    if end < 0:
        return None
    return payload[start + 1 : end].decode("ascii", "replace")


@dataclass
class _State:
    sent_at: dict[str, float] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    received: int = 0
    unmatched: int = 0
    last_received: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    all_in: threading.Event = field(default_factory=threading.Event)
    expected: int = 0


class LoadProcess:
    """What runs inside one load process (see the module docstring)."""

    def __init__(self, host: str, port: int, ids: Sequence[str], mode: str, tag: str) -> None:
        self.host, self.port, self.ids, self.mode, self.tag = host, port, list(ids), mode, tag
        self.loop = MqttLoop(name=f"bench-load-{tag}")
        self.state = _State()
        self.clients: list[mqtt.Client] = []
        self.by_id: dict[str, mqtt.Client] = {}
        self._subscribed = 0
        self._need = 0
        self._ready = threading.Event()
        self._seq = 0

    # -- set-up ---------------------------------------------------------------
    def connect(self, timeout: float = 60.0) -> None:
        groups = [self.ids] if self.mode == "shared" else [[device_id] for device_id in self.ids]
        self._need = len(groups)
        for group in groups:
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=f"bench-{self.tag}-{group[0]}-{uuid.uuid4().hex[:6]}",
                protocol=mqtt.MQTTv311,
            )
            client.max_inflight_messages_set(1000)
            client.max_queued_messages_set(0)
            topics = [(f"{PREFIX}/devices/{d}/offer", 1) for d in group]
            client.on_connect = self._subscriber(topics)
            client.on_subscribe = self._on_subscribe
            client.on_message = self._on_message
            client.connect_async(self.host, self.port, keepalive=120)
            self.loop.attach(client, on_error=lambda message: None)
            self.clients.append(client)
            for device_id in group:
                self.by_id[device_id] = client
        if not self._ready.wait(timeout):
            raise RuntimeError(f"load {self.tag}: {self._subscribed}/{self._need} subscribed")

    def _subscriber(self, topics: list[tuple[str, int]]) -> Any:
        def on_connect(client: mqtt.Client, *_args: Any) -> None:
            # SUBSCRIBE in chunks: one packet per 100 topics keeps each well under limits.
            client._bench_pending = (len(topics) + 99) // 100  # type: ignore[attr-defined]
            for i in range(0, len(topics), 100):
                client.subscribe(topics[i : i + 100])

        return on_connect

    def _on_subscribe(self, client: mqtt.Client, *_args: Any) -> None:
        client._bench_pending -= 1  # type: ignore[attr-defined]
        if client._bench_pending == 0:  # type: ignore[attr-defined]
            self._subscribed += 1
            if self._subscribed >= self._need:
                self._ready.set()

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        now = time.perf_counter()
        state = self.state
        rid = request_id_of(message.payload)
        with state.lock:
            state.received += 1
            state.last_received = now
            sent = state.sent_at.pop(rid, None) if rid is not None else None
            if sent is None:
                state.unmatched += 1
            else:
                state.latencies.append(now - sent)
            if state.expected and state.received >= state.expected:
                state.all_in.set()

    # -- load ------------------------------------------------------------------
    def _payload(self, rid: str) -> bytes:
        return json.dumps(
            {"build_id": "build-1", "version": "1.0.0", "request_id": rid},
            separators=(",", ":"),
        ).encode()

    def _reset(self, expected: int) -> _State:
        self.state = _State(expected=expected)
        return self.state

    def burst(self, count: int, settle: float) -> dict[str, Any]:
        """Publish ``count`` announcements round-robin over the ids as fast as possible."""
        state = self._reset(count)
        ids = self.ids
        plan = []
        for i in range(count):
            self._seq += 1
            device_id = ids[i % len(ids)]
            rid = f"{self.tag}-{self._seq}"
            plan.append((device_id, rid, self._payload(rid)))
        done = threading.Event()
        started = [0.0]

        def publish_all() -> None:  # on the loop thread: paho writes as it goes
            started[0] = time.perf_counter()
            for device_id, rid, payload in plan:
                state.sent_at[rid] = time.perf_counter()
                self.by_id[device_id].publish(
                    f"{PREFIX}/devices/{device_id}/announce", payload, qos=1
                )
            done.set()

        self.loop.call(publish_all)
        done.wait(300)
        self._wait_answers(state, settle)
        return self._report(state, started[0], count)

    def paced(self, rate: float, duration: float, settle: float) -> dict[str, Any]:
        """Publish at ``rate`` announcements/s for ``duration`` s; time each answer."""
        count = max(1, int(rate * duration))
        state = self._reset(count)
        ids = self.ids
        started = time.perf_counter()
        tick = 0.002  # publish what is due every 2 ms
        sent = 0
        while sent < count:
            due = min(count, int((time.perf_counter() - started) * rate) + 1)
            batch = []
            while sent < due:
                self._seq += 1
                device_id = ids[sent % len(ids)]
                rid = f"{self.tag}-{self._seq}"
                batch.append((device_id, rid, self._payload(rid)))
                sent += 1
            if batch:
                self.loop.call(self._publisher(batch, state))
            time.sleep(tick)
        self._wait_answers(state, settle)
        return self._report(state, started, count)

    def _publisher(self, batch: list[tuple[str, str, bytes]], state: _State) -> Any:
        def publish() -> None:
            for device_id, rid, payload in batch:
                state.sent_at[rid] = time.perf_counter()
                self.by_id[device_id].publish(
                    f"{PREFIX}/devices/{device_id}/announce", payload, qos=1
                )

        return publish

    def _wait_answers(self, state: _State, settle: float) -> None:
        # All answers in, or nothing new for ``settle`` seconds.
        seen = -1
        while not state.all_in.wait(settle):
            with state.lock:
                if state.received == seen:
                    break
                seen = state.received

    def _report(self, state: _State, started: float, count: int) -> dict[str, Any]:
        with state.lock:
            return {
                "sent": count,
                "received": state.received,
                "unmatched": state.unmatched,
                "started": started,
                "last": state.last_received,
                "latencies": list(state.latencies),
            }

    def close(self) -> None:
        for client in self.clients:
            self.loop.detach(client, timeout=2)
        self.loop.stop()


def serve(conn: Connection, host: str, port: int, ids: Sequence[str], mode: str, tag: str) -> None:
    """Entry point of a load process: set up, then obey the parent's commands."""
    load = LoadProcess(host, port, ids, mode, tag)
    try:
        load.connect()
        conn.send(("ready", len(load.clients)))
        while True:
            command, args = conn.recv()
            if command == "burst":
                conn.send(load.burst(*args))
            elif command == "paced":
                conn.send(load.paced(*args))
            elif command == "stop":
                break
    except Exception as e:  # the parent reports it; a load process never hangs the run
        conn.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        load.close()
