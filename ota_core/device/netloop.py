"""Many paho clients on one thread: the network side of the fleet simulator.

paho's ``loop_start()`` costs a thread per client, and each of those threads wakes
every second. :class:`MqttLoop` instead drives any number of clients from one
thread with a :mod:`selectors` loop, through paho's documented external-loop API
(``loop_read``/``loop_write``/``loop_misc`` plus the ``on_socket_*`` callbacks).
Callbacks (``on_connect``, ``on_message``...) run on the loop thread, exactly as
they would on a ``loop_start()`` thread, so a :class:`~ota_core.device.DeviceClient`
behaves the same on either.

:class:`SharedConnection` is the benchmark mode "one MQTT connection, many device
ids": one client subscribed to ``{prefix}/devices/+/offer`` that publishes for any
device id and hands each offer to the device it names. It only works against a
broker without per-device ACLs (the production ``mosquitto.conf`` lets a device
publish and subscribe only under its own id, so there it receives nothing).

Thread safety: publishing from any thread is fine (paho locks its queues); a
publish from another thread asks the loop to watch the socket for writing.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import selectors
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger(__name__)

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
MISC_INTERVAL = 1.0  # seconds between keepalive checks (paho's own loop uses 1 s too)
MAX_RECONNECT_DELAY = 30.0


@dataclass(eq=False)
class _Entry:
    client: mqtt.Client
    on_error: Callable[[str], None]
    reconnect: bool
    sock: Any = None
    delay: float = 1.0
    reconnect_at: float | None = None
    closing: bool = False
    closed: threading.Event = field(default_factory=threading.Event)
    previous_open: Any = None


class MqttLoop:
    """One daemon thread running many paho clients (see the module docstring)."""

    def __init__(self, name: str = "ota-mqtt-loop") -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, _READ, None)
        self._commands: deque[Callable[[], None]] = deque()
        self._entries: dict[int, _Entry] = {}  # by id(client)
        self._timers: list[tuple[float, int, int]] = []  # (when, seq, id(client))
        self._seq = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------- public, any thread

    @property
    def clients(self) -> int:
        return len(self._entries)

    def attach(
        self, client: mqtt.Client, on_error: Callable[[str], None], reconnect: bool = True
    ) -> None:
        """Drive ``client`` (after ``connect_async``) from this loop: connect it now and,
        if ``reconnect``, again with backoff whenever the connection drops.

        ``on_error`` gets a message when a connection attempt fails (refused, unreachable).
        """
        entry = _Entry(client, on_error, reconnect)
        entry.previous_open = client.on_socket_open
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        client.user_data_set(entry)
        self.call(lambda: self._add(entry))

    def detach(self, client: mqtt.Client, timeout: float = 5.0) -> None:
        """Disconnect ``client`` cleanly and stop driving it. Waits (bounded) until paho has
        written the DISCONNECT and closed the socket; call it from any thread but the loop's."""
        entry = self._entries.get(id(client))
        if entry is None:
            return

        def begin() -> None:
            entry.closing = True
            entry.reconnect_at = None
            if entry.sock is None:
                entry.closed.set()
            else:
                client.disconnect()  # paho writes it from this thread, then closes the socket

        self.call(begin)
        entry.closed.wait(timeout)
        removed = threading.Event()

        def remove() -> None:
            self._remove(entry)
            removed.set()

        self.call(remove)
        removed.wait(timeout)

    def call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop thread, soon."""
        self._commands.append(fn)
        if threading.get_ident() != self._thread.ident:
            self._wake()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        self._wake()
        self._thread.join(timeout)
        with contextlib.suppress(OSError):
            self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    # ----------------------------------------------------------------- paho socket callbacks

    def _on_socket_open(self, client: mqtt.Client, entry: _Entry, sock: Any) -> None:
        # Called by reconnect(), which only this loop thread calls.
        entry.sock = sock
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(sock)
        self._selector.register(sock, _READ, entry)
        if entry.previous_open is not None:
            entry.previous_open(client, None, sock)

    def _on_socket_close(self, client: mqtt.Client, entry: _Entry, sock: Any) -> None:
        def forget() -> None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(sock)
            if entry.sock is sock:
                entry.sock = None
            if entry.closing:
                entry.closed.set()
            else:
                self._schedule_reconnect(entry)

        if threading.get_ident() == self._thread.ident:
            forget()
        else:
            # A selector must not keep a closed socket: unregister before paho closes it.
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(sock)
            self.call(forget)

    def _on_register_write(self, client: mqtt.Client, entry: _Entry, sock: Any) -> None:
        if threading.get_ident() == self._thread.ident:
            self._watch(entry, sock, _READ | _WRITE)
        else:
            self.call(lambda: self._watch(entry, sock, _READ | _WRITE))

    def _on_unregister_write(self, client: mqtt.Client, entry: _Entry, sock: Any) -> None:
        if threading.get_ident() == self._thread.ident:
            self._watch(entry, sock, _READ)
        else:
            self.call(lambda: self._watch(entry, sock, _READ))

    # ----------------------------------------------------------------- loop thread only

    def _watch(self, entry: _Entry, sock: Any, events: int) -> None:
        if entry.sock is not sock:
            return  # an old socket of this client
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.modify(sock, events, entry)

    def _add(self, entry: _Entry) -> None:
        self._entries[id(entry.client)] = entry
        self._connect(entry, first=True)

    def _connect(self, entry: _Entry, first: bool = False) -> None:
        if entry.closing or id(entry.client) not in self._entries:
            return
        try:
            entry.client.reconnect()
        except (OSError, ValueError) as e:
            entry.on_error(f"cannot reach the MQTT broker: {e}")
            if not first:
                self._schedule_reconnect(entry)

    def _schedule_reconnect(self, entry: _Entry) -> None:
        if not entry.reconnect or entry.closing or entry.reconnect_at is not None:
            return
        if id(entry.client) not in self._entries:
            return
        entry.reconnect_at = time.monotonic() + entry.delay
        entry.delay = min(entry.delay * 2, MAX_RECONNECT_DELAY)
        self._seq += 1
        heapq.heappush(self._timers, (entry.reconnect_at, self._seq, id(entry.client)))

    def _remove(self, entry: _Entry) -> None:
        entry.closing = True
        sock = entry.sock
        if sock is not None:
            # paho did not close it in time (no answer to DISCONNECT): drop it here.
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(sock)
            with contextlib.suppress(OSError):
                sock.close()
            entry.sock = None
        self._entries.pop(id(entry.client), None)
        entry.closed.set()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")

    def _run(self) -> None:
        next_misc = time.monotonic() + MISC_INTERVAL
        while not self._stopping:
            now = time.monotonic()
            wait = next_misc - now
            if self._timers:
                wait = min(wait, self._timers[0][0] - now)
            if self._commands:
                wait = 0
            try:
                events = self._selector.select(max(0.0, wait))
            except OSError:  # a socket closed under us; the next round sees it gone
                events = []
            for key, mask in events:
                entry = key.data
                if entry is None:
                    with contextlib.suppress(BlockingIOError, OSError):
                        self._wake_r.recv(4096)
                    continue
                self._service(entry, key.fileobj, mask)
            while self._commands:
                command = self._commands.popleft()
                try:
                    command()
                except Exception:  # one bad command must not stop every device
                    log.exception("mqtt loop command failed")
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                _, _, key_id = heapq.heappop(self._timers)
                found = self._entries.get(key_id)
                if found is not None and found.reconnect_at is not None:
                    found.reconnect_at = None
                    self._connect(found)
            if now >= next_misc:
                next_misc = now + MISC_INTERVAL
                self._misc()

    def _service(self, entry: _Entry, sock: Any, mask: int) -> None:
        client = entry.client
        try:
            if mask & _READ and entry.sock is sock:
                client.loop_read()
            if mask & _WRITE and entry.sock is sock:
                client.loop_write()
        except Exception:  # paho raising from a callback: keep the other devices going
            log.exception("mqtt client %s failed in the loop", client._client_id)

    def _misc(self) -> None:
        for entry in list(self._entries.values()):
            if entry.sock is None:
                continue
            client = entry.client
            try:
                client.loop_misc()
            except Exception:
                log.exception("mqtt keepalive failed")
                continue
            if client.is_connected():
                entry.delay = 1.0
            if entry.sock is not None and client.want_write():
                # Belt and braces for a register-write raced by a write in progress.
                self._watch(entry, entry.sock, _READ | _WRITE)


# --------------------------------------------------------------------------- one connection


OfferHandler = Callable[[mqtt.Client, Any, mqtt.MQTTMessage], None]


class SharedConnection:
    """One MQTT connection publishing and receiving for many device ids (benchmarks only).

    Subscribes once to ``{prefix}/devices/+/offer`` (QoS 1) and dispatches each message
    to the handler registered for its topic. Needs a broker without per-device ACLs.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        topic_filter: str,
        protocol: str = "5",
        username: str | None = None,
        password: str | None = None,
        client_id: str | None = None,
        keepalive: int = 60,
    ) -> None:
        self.protocol = protocol
        self.topic_filter = topic_filter
        self._host, self._port, self._keepalive = host, port, keepalive
        version = MQTTProtocolVersion.MQTTv5 if protocol == "5" else MQTTProtocolVersion.MQTTv311
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id or f"ota-fleet-{uuid.uuid4().hex[:10]}",
            clean_session=None if version == MQTTProtocolVersion.MQTTv5 else True,
            protocol=version,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        # Many devices' QoS 1 traffic shares this one session: allow more in flight.
        self.client.max_inflight_messages_set(1000)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_socket_open = _nodelay
        self._handlers: dict[str, OfferHandler] = {}
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._subscribed = False
        self._error: str | None = None
        self._sub_mid: int | None = None
        self._started = False

    def start(self, timeout: float) -> None:
        """Connect (on paho's own network thread) and subscribe, once; later calls only wait.

        Raises OSError when the broker cannot be reached, RuntimeError when it refuses.
        """
        with self._lock:
            first = not self._started
            self._started = True
        if first:
            try:
                self.client.connect(self._host, self._port, keepalive=self._keepalive)
            except BaseException:
                with self._lock:
                    self._started = False
                raise
            self.client.loop_start()
        with self._ready:
            self._ready.wait_for(lambda: self._subscribed or self._error is not None, timeout)
            if self._error is not None:
                raise RuntimeError(self._error)
            if not self._subscribed:
                raise RuntimeError(f"no SUBACK for {self.topic_filter} within {timeout:g}s")

    @property
    def ready(self) -> bool:
        return self._subscribed

    def register(self, topic: str, handler: OfferHandler) -> None:
        with self._lock:
            self._handlers[topic] = handler

    def unregister(self, topic: str) -> None:
        with self._lock:
            self._handlers.pop(topic, None)

    def close(self) -> None:
        if self._started:
            self.client.disconnect()
            self.client.loop_stop()

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            with self._ready:
                self._error = f"the MQTT broker refused the connection: {reason_code}"
                self._ready.notify_all()
            return
        result, mid = client.subscribe(self.topic_filter, qos=1)
        with self._ready:
            self._sub_mid = mid
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.warning("shared connection: subscribe failed: %s", result)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        with self._ready:
            if mid != self._sub_mid:
                return
            if any(rc.is_failure for rc in reason_codes):
                self._error = f"the broker refused the subscription to {self.topic_filter}"
            else:
                self._subscribed = True
            self._ready.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        handler = self._handlers.get(message.topic)
        if handler is not None:
            handler(client, userdata, message)


def _nodelay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    # Offers and status reports are small and latency-bound: no Nagle delay.
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
