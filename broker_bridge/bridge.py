"""The bridge service: a paho-mqtt client around :class:`~broker_bridge.handler.BridgeHandler`.

Threads, and why there are exactly these:

* paho's network thread (``loop_start``) reads announcements and status reports
  and runs the handler right in the ``on_message`` callback — callback-level
  handling is what keeps the bridge near a do-nothing paho responder's
  throughput. Offers are published at QoS 1 without waiting for the PUBACK.
* one registry sender thread: the callback only queues events, and the
  database is written behind in batches by a child process
  (:mod:`broker_bridge.writer_process`; ``OTA_REGISTRY_WRITER=thread`` keeps
  the writer a thread of this process, :class:`~broker_bridge.writer.RegistryWriter`).
* one small timer thread that refreshes the catalog snapshot every
  ``catalog_poll_seconds`` — the admin side may be another process, and the
  catalog revision in the database is how the two coordinate — follows offer
  key rotations (``ota keys rotate``), and logs a one-line traffic summary
  now and then.
* the push thread (:mod:`broker_bridge.push`): when the catalog revision
  moves, offers go to every known device the new catalog offers an update,
  paced, without waiting for the devices to ask.
* the rollout supervisor thread (:mod:`broker_bridge.supervisor`): pauses a
  rollout whose failure rate is over its threshold, advances one whose wait
  is over.

In front of the handler, on the MQTT thread, two cheap guards
(:mod:`broker_bridge.limits`): a token bucket per device drops floods
(``OTA_DEVICE_RATE_LIMIT``/``OTA_DEVICE_RATE_BURST``, logged once per device
per window), and an exact duplicate of an announcement answered in the last
``OTA_REPLY_CACHE_SECONDS`` gets the same reply bytes again (QoS 1 is
at-least-once; a duplicate is neither answered differently nor recorded twice).

A release published elsewhere is used at once, not just after the next poll:
an answer that a newer catalog could change for the better — ``up-to-date``
or ``unknown-build`` — is only sent from a catalog checked *after* the
announcement arrived. When the last check is older, the message is handed to
the timer thread, which checks the catalog revision (one tiny SELECT, off the
MQTT thread, shared by every message waiting) and answers. Update offers go
out at once: a newer release still reaches the device on its next announcement.

The session is persistent (MQTT 5: ``clean_start=False`` with a session expiry;
MQTT 3.1.1: ``clean_session=False``) and the subscriptions are QoS 1, so
announcements sent while the bridge was away are delivered when it is back.
The subscriptions are still renewed on every (re)connect, in case the broker
lost the session.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import signal
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from prometheus_client import start_http_server

from broker_bridge.handler import BridgeHandler, HandlerResult, Outcome
from broker_bridge.limits import DeviceRateLimiter, ReplyCache
from broker_bridge.push import Pusher
from broker_bridge.supervisor import RolloutSupervisor
from broker_bridge.writer import RegistryWriter
from broker_bridge.writer_process import ProcessRegistryWriter
from ota_core import metrics
from ota_core.catalog import Catalog
from ota_core.errors import InvalidInput, OtaError
from ota_core.services import Services
from ota_core.settings import Settings
from ota_core.store.devices import StatusSeen
from ota_core.store.rollouts import RolloutStore
from ota_core.topics import TopicKind

log = logging.getLogger(__name__)

#: What a cached reply depends on: (catalog revision, offer key id).
_Stamp = tuple[int, str | None]

#: How long the broker keeps the bridge's MQTT 5 session (and queues its
#: announcements) while the bridge is away.
SESSION_EXPIRY_SECONDS = 24 * 3600
KEEPALIVE_SECONDS = 30
RECONNECT_MIN_DELAY = 1
RECONNECT_MAX_DELAY = 30
#: Offers in flight (sent, PUBACK not yet received). paho's default of 20 left
#: offers waiting for PUBACKs under load: ~10% fewer offers/s in a 20,000-burst here.
MAX_INFLIGHT_OFFERS = 100
#: How long stop() waits for offers already published to be acknowledged.
DRAIN_SECONDS = 5.0
SUMMARY_EVERY_SECONDS = 60.0
#: Rate-limited devices are logged once per window, with a summary at its end.
RATE_LOG_WINDOW_SECONDS = 10.0


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool

    @classmethod
    def from_url(cls, url: str) -> BrokerAddress:
        """``mqtt://host:1883``, ``tcp://…`` or ``mqtts://host:8883`` (TLS)."""
        parts = urlsplit(url)
        if parts.scheme not in {"mqtt", "tcp", "mqtts"} or not parts.hostname:
            raise InvalidInput(f"broker URL {url!r} must look like mqtt://host:1883")
        tls = parts.scheme == "mqtts"
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError as e:
            raise InvalidInput(f"broker URL {url!r} has an invalid port") from e
        return cls(parts.hostname, port, tls)

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclass
class BridgeStats:
    """Message counters. Written by the MQTT and timer threads under the bridge's lock."""

    announcements: int = 0
    offers: int = 0
    up_to_date: int = 0
    announce_errors: int = 0
    statuses: int = 0
    status_errors: int = 0
    dropped: int = 0
    connects: int = 0
    rate_limited: int = 0  # messages dropped by the per-device rate limit
    duplicates: int = 0  # announcements answered again from the reply cache

    def snapshot(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def count(self, result: HandlerResult) -> None:
        outcome = result.outcome
        if outcome is Outcome.UPDATE_OFFERED:
            self.announcements += 1
            self.offers += 1
        elif outcome is Outcome.UP_TO_DATE:
            self.announcements += 1
            self.up_to_date += 1
        elif outcome is Outcome.ANNOUNCE_REJECTED:
            self.announcements += 1
            self.announce_errors += 1
        elif outcome is Outcome.STATUS_RECORDED:
            self.statuses += 1
        elif outcome is Outcome.STATUS_REJECTED:
            self.statuses += 1
            self.status_errors += 1
        else:
            self.dropped += 1


def _quoted(text: str | None, limit: int = 300) -> str:
    """A log-safe rendering of untrusted text: JSON-quoted, one line, bounded."""
    return json.dumps((text or "")[:limit])


def _set_nodelay(_client: mqtt.Client, _userdata: Any, sock: Any) -> None:
    # Nagle's algorithm holds small offers back for tens of milliseconds.
    with contextlib.suppress(OSError, AttributeError):  # not a TCP socket (e.g. unix)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Bridge:
    """Answers announcements and records status reports for one broker connection."""

    def __init__(self, settings: Settings, services: Services) -> None:
        self._settings = settings
        self._services = services
        self._topics = settings.topics
        self._address = BrokerAddress.from_url(settings.effective_broker_url)
        self._v5 = settings.mqtt_protocol == "5"
        self._group = settings.replicas_group
        if self._group is not None and not self._v5:
            # MQTT 3.1.1 has no shared subscriptions: a 3.1.1 broker would take
            # "$share/…" as a plain topic and the bridge would never hear a device.
            raise InvalidInput(
                f"--replicas-group {self._group!r} needs MQTT 5 shared subscriptions; "
                "the bridge is set to MQTT 3.1.1 (set OTA_MQTT_PROTOCOL=5)"
            )
        catalog_cache = services.catalog
        self.handler = BridgeHandler(
            self._topics,
            services.offers,
            lambda: catalog_cache.current,
            settings.max_message_bytes,
        )
        self.stats = BridgeStats()
        self._writer: RegistryWriter | ProcessRegistryWriter
        if settings.registry_writer == "process":
            self._writer = ProcessRegistryWriter(
                services.database.engine.url.render_as_string(hide_password=False),
                log_level=settings.log_level,
                log_format=settings.log_format,
            )
        else:
            self._writer = RegistryWriter(services.registry.apply)
        self._limiter = (
            DeviceRateLimiter(settings.device_rate_limit, settings.device_rate_burst)
            if settings.device_rate_limit > 0
            else None
        )
        self._replies = (
            ReplyCache(settings.reply_cache_seconds) if settings.reply_cache_seconds > 0 else None
        )
        self.pusher: Pusher | None = None
        if settings.push_rate > 0:
            self.pusher = Pusher(
                registry=services.registry,
                catalog=lambda: catalog_cache.current,
                offers=lambda: self.handler.offers,
                topics=self._topics,
                publish=self._publish_push,
                rate=settings.push_rate,
                connected=lambda: self._ready.is_set(),
                backlog=lambda: self._unacked,
            )
        self.supervisor = RolloutSupervisor(
            RolloutStore(services.database), settings.rollout_check_seconds
        )
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._timer: threading.Thread | None = None
        self._started = False
        self._subscribe_mid: int | None = None
        self._connected = False  # a CONNACK accepted the current connection
        self._connect_failures = 0
        # Offers published and not yet acknowledged (for a clean stop).
        self._unacked = 0
        self._count_lock = threading.Lock()
        # Start time of the last catalog check: the snapshot in use is at least that fresh.
        self._fresh_since = -float("inf")
        self._catalog_failing = False
        # Announcements waiting for a catalog check newer than their arrival.
        self._recheck: deque[_Deferred] = deque()
        self._recheck_lock = threading.Lock()  # orders deferrals against stop()
        self._closing = False  # no more deferrals: stop() is answering what is left
        self._timer_wake = threading.Event()
        self._offer_key_id = self._key_id()
        self._client = self._make_client()
        self._metrics_server: Any = None  # prometheus-client's WSGI server, when serving

    # -- public API -----------------------------------------------------

    @property
    def broker(self) -> BrokerAddress:
        return self._address

    @property
    def registry_backlog(self) -> int:
        return self._writer.backlog

    def start(self) -> None:
        """Start the bridge's threads and connect in the background; returns at once."""
        if self._started:
            return
        self._started = True
        self._stopping.clear()
        # The gauge reads the writer's queue length at scrape time: nothing to keep in step.
        metrics.REGISTRY_BACKLOG.set_function(lambda: float(self._writer.backlog))
        port = self._settings.metrics_port
        if port is not None and self._metrics_server is None:
            self._metrics_server, _thread = start_http_server(
                port, addr=self._settings.host, registry=metrics.REGISTRY
            )
            log.info("bridge metrics at http://%s:%d/metrics", self._settings.host, port)
        self._closing = False
        self._check_catalog()
        self._refresh_offer_key()
        self._writer.start()
        if self.pusher is not None:
            self.pusher.start()
        self.supervisor.start()
        self._timer = threading.Thread(
            target=self._timer_loop, name="ota-catalog-refresh", daemon=True
        )
        self._timer.start()
        clean_start: mqtt.CleanStartOption = mqtt.MQTT_CLEAN_START_FIRST_ONLY
        properties = None
        if self._group is not None:
            # A replica keeps no session: Mosquitto keeps handing a shared
            # subscription's messages to a member whose session outlives it, so a
            # dead replica would swallow its share until the expiry. Without a
            # session, the survivors take everything; a device whose announcement
            # was in flight to the dead replica asks again (devices retry).
            clean_start = True
        elif self._v5:
            clean_start = False
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = SESSION_EXPIRY_SECONDS
        log.info(
            "bridge connecting broker=%s protocol=%s client_id=%s prefix=%s replicas_group=%s",
            self._address, self._settings.mqtt_protocol, self._settings.mqtt_client_id,
            self._topics.prefix, self._group,
        )
        self._client.connect_async(
            self._address.host,
            self._address.port,
            keepalive=KEEPALIVE_SECONDS,
            clean_start=clean_start,
            properties=properties,
        )
        self._client.loop_start()

    def wait_ready(self, timeout: float) -> bool:
        """True once connected and subscribed; False if that took longer than ``timeout``."""
        return self._ready.wait(timeout)

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def flush_registry(self, timeout: float = 5.0) -> bool:
        """Wait until every registry event queued so far is in the database."""
        return self._writer.flush(timeout)

    def stop(self) -> None:
        """Answer what is in flight, disconnect, write the registry backlog, join threads."""
        if not self._started:
            return
        self._started = False
        with self._recheck_lock:
            self._closing = True  # from now on the MQTT thread answers everything itself
        self._stopping.set()
        self._timer_wake.set()
        self.supervisor.stop()
        if self.pusher is not None:
            self.pusher.stop()
        if self._timer is not None:
            self._timer.join()
            self._timer = None
        self._answer_deferred()  # what the timer left, while still connected
        self._drain_offers(DRAIN_SECONDS)
        self._client.disconnect()
        self._client.loop_stop()
        self._ready.clear()
        lost = self._writer.stop()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None
        log.info(
            "bridge stopped %s registry_events_lost=%d",
            " ".join(f"{k}={v}" for k, v in self.stats.snapshot().items()), lost,
        )

    def run_forever(self) -> None:
        """``ota bridge``: start, serve until SIGINT/SIGTERM, then stop cleanly."""
        done = threading.Event()
        previous: dict[signal.Signals, Any] = {}

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("bridge received %s; stopping", signal.Signals(signum).name)
            done.set()

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, on_signal)
        try:
            self.start()
            _quiet_garbage_collector()
            while not done.wait(1.0):
                pass
        except KeyboardInterrupt:  # only when signals could not be installed
            pass
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    # -- paho client and callbacks (run on paho's network thread) -------------

    def _make_client(self) -> mqtt.Client:
        settings = self._settings
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.mqtt_client_id,
            clean_session=None if self._v5 else False,
            protocol=mqtt.MQTTv5 if self._v5 else mqtt.MQTTv311,
        )
        if settings.mqtt_username:
            password = settings.mqtt_password.get_secret_value() if settings.mqtt_password else None
            client.username_pw_set(settings.mqtt_username, password)
        if self._address.tls:
            client.tls_set()
        client.max_inflight_messages_set(MAX_INFLIGHT_OFFERS)
        client.reconnect_delay_set(RECONNECT_MIN_DELAY, RECONNECT_MAX_DELAY)
        client.on_socket_open = _set_nodelay
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            log.error(
                "broker refused the bridge's connection broker=%s reason=%s; retrying",
                self._address, _quoted(str(reason)),
            )
            return
        self._connect_failures = 0
        self._connected = True
        self.stats.connects += 1
        log.info(
            "bridge connected broker=%s session_present=%s",
            self._address, bool(flags.session_present),
        )
        # Subscribe on every connect: the broker may have dropped the session.
        result, mid = client.subscribe([
            (self._filter(TopicKind.ANNOUNCE), 1),
            (self._filter(TopicKind.STATUS), 1),
        ])
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.error("bridge could not subscribe error=%s", mqtt.error_string(result))
        self._subscribe_mid = mid

    def _filter(self, kind: TopicKind) -> str:
        """The subscription filter: shared between the replicas of a group, if any."""
        plain = str(self._topics.filter(kind))
        return plain if self._group is None else f"$share/{self._group}/{plain}"

    def _on_subscribe(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        if mid != self._subscribe_mid:
            return
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:
            log.error(
                "broker refused the bridge's subscriptions reasons=%s; check the broker ACL",
                _quoted(", ".join(refused)),
            )
            return
        log.info(
            "bridge subscribed announce=%s status=%s",
            self._filter(TopicKind.ANNOUNCE), self._filter(TopicKind.STATUS),
        )
        self._ready.set()

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: Any) -> None:
        self._connect_failures += 1
        if self._stopping.is_set():
            return
        # paho retries with backoff (1 s doubling to 30 s); say so plainly, no traceback.
        log.warning(
            "broker unreachable broker=%s attempts=%d; retrying with backoff up to %ds",
            self._address, self._connect_failures, RECONNECT_MAX_DELAY,
        )

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        self._ready.clear()
        was_connected, self._connected = self._connected, False
        if not was_connected:
            return  # a refused CONNECT, already logged by _on_connect
        if self._stopping.is_set():
            log.info("bridge disconnected broker=%s", self._address)
        else:
            log.warning(
                "bridge lost the broker broker=%s reason=%s; reconnecting",
                self._address, _quoted(str(reason)),
            )

    def _on_publish(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _mid: int,
        _reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        with self._count_lock:
            self._unacked -= 1

    def _on_message(self, client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        # Never let an exception escape: paho would re-raise it and end its thread.
        try:
            try:
                topic = message.topic
            except UnicodeDecodeError:
                with self._count_lock:
                    self.stats.dropped += 1
                log.warning("dropped a message whose topic is not UTF-8")
                return
            payload = message.payload
            if not isinstance(payload, bytes):
                payload = bytes(payload)
            arrival = time.monotonic()
            limiter = self._limiter
            if limiter is not None:
                device_key = _device_key(topic)
                if device_key is not None and not limiter.allow(device_key, arrival):
                    self._rate_limited(limiter, device_key)
                    return
            snapshot = self._services.catalog.current  # what the handler will see, or newer
            stamp = (snapshot.revision, self._offer_key_id)
            if self._replies is not None and self._answer_duplicate(
                topic, payload, stamp, arrival
            ):
                return
            fresh_since = self._fresh_since  # read before handling: see _defer
            result = self.handler.handle(topic, payload, datetime.now(UTC))
            if (
                arrival >= fresh_since
                and _better_with_newer_catalog(result)
                and self._defer(_Deferred(topic, payload, snapshot, stamp, result, arrival))
            ):
                return
            self._emit(result, topic, payload, stamp, arrival)
        except Exception:
            log.exception("bridge failed on a message; continuing")

    def _rate_limited(self, limiter: DeviceRateLimiter, device_key: str) -> None:
        with self._count_lock:
            self.stats.rate_limited += 1
        metrics.ERRORS.labels(kind="rate-limited").inc()
        if limiter.note_drop(device_key):  # its first drop in this window: one line
            log.warning(
                "device rate-limited device_id=%s limit=%g/s burst=%d; its messages are "
                "dropped and counted until it slows down",
                _quoted(device_key, 70), limiter.rate, int(limiter.burst),
            )

    def _answer_duplicate(self, topic: str, payload: bytes, stamp: _Stamp, now: float) -> bool:
        """Republish the cached reply to an exact duplicate; False when there is none."""
        assert self._replies is not None
        cached = self._replies.get(topic, payload, stamp, now)
        if cached is None:
            return False
        with self._count_lock:
            self.stats.duplicates += 1
        # A QoS 1 redelivery or a device asking twice: received, and answered again
        # with the same bytes (status "resent": the cache does not keep the kind).
        metrics.ANNOUNCEMENTS.inc()
        metrics.OFFERS.labels(status="resent").inc()
        self._publish(cached.topic, cached.payload, None, None)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("announce outcome=duplicate topic=%s", _quoted(topic, 200))
        return True

    def _publish(
        self, topic: str, payload: bytes, device_id: str | None, request_id: str | None
    ) -> None:
        """Publish at QoS 1 without waiting for the PUBACK. Any thread (paho locks)."""
        with self._count_lock:
            self._unacked += 1
        info = self._client.publish(topic, payload, qos=1)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            # NO_CONN keeps the QoS 1 message queued for the reconnect; other codes lose it.
            with self._count_lock:
                self._unacked -= 1
            log.error(
                "offer not published device_id=%s request_id=%s error=%s",
                device_id, request_id, mqtt.error_string(info.rc),
            )

    def _publish_push(self, topic: str, payload: bytes) -> None:
        """The push thread's way out: same QoS 1 path as answers."""
        metrics.PUSHES.inc()
        self._publish(topic, payload, None, None)

    def _defer(self, deferred: _Deferred) -> bool:
        """Queue an announcement for a catalog check newer than its arrival.

        The snapshot that answered it is at least as new as the check that
        started at ``fresh_since`` (read before handling; the cache swaps the
        snapshot before ``_fresh_since`` moves). A check that started before
        the message arrived may have missed a release published meanwhile.
        """
        with self._recheck_lock:
            if self._closing:
                return False
            self._recheck.append(deferred)
        self._timer_wake.set()
        return True

    def _emit(
        self,
        result: HandlerResult,
        topic: str,
        payload: bytes,
        stamp: _Stamp,
        arrival: float | None = None,
    ) -> None:
        """Publish the reply, queue the registry event, count and log. Any thread.

        ``stamp`` (catalog revision, offer key id) was read before the answer was
        made: a cached reply is only reused while the stamp is still current.
        """
        # Bookkeeping first: whoever sees the reply may rely on the event being queued
        # (flush_registry then covers it), the counters counted and the cache filled.
        if result.event is not None:
            self._writer.put(result.event)
        with self._count_lock:
            self.stats.count(result)
        reply = result.reply
        if reply is not None:
            if self._replies is not None and result.request_id is not None:
                self._replies.put(
                    topic, payload, stamp, reply.topic, reply.payload, time.monotonic()
                )
            self._publish(reply.topic, reply.payload, result.device_id, result.request_id)
        _count_metrics(result, arrival)
        _log_result(result, topic)

    def _answer_deferred(self) -> None:
        """Answer every announcement waiting for a fresh catalog, with the current one."""
        catalog = self._services.catalog
        while True:
            try:
                item = self._recheck.popleft()
            except IndexError:
                return
            try:
                result, stamp = item.result, item.stamp
                current = catalog.current
                if current is not item.snapshot:  # it changed: answer again
                    stamp = (current.revision, self._offer_key_id)
                    result = self.handler.handle(item.topic, item.payload, datetime.now(UTC))
                self._emit(result, item.topic, item.payload, stamp, item.arrival)
            except Exception:
                log.exception("bridge failed on a message; continuing")

    def _drain_offers(self, timeout: float) -> None:
        """Give offers already handed to paho a moment to be acknowledged by the broker."""
        if not self._ready.is_set():
            return
        deadline = time.monotonic() + timeout
        while self._unacked > 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        if self._unacked > 0:
            log.warning(
                "stopping with offers not yet acknowledged by the broker offers=%d",
                self._unacked,
            )

    # -- the timer thread ---------------------------------------------------

    def _refresh_offer_key(self) -> None:
        """Follow ``ota keys rotate`` run elsewhere: one stat of the keyring when unchanged."""
        services = self._services
        try:
            switched = services.refresh_offer_key()
        except OtaError as e:
            log.warning(
                "offer key reload failed; keeping the current key error=%s", _quoted(e.detail)
            )
            return
        if switched:
            self.handler.set_offers(services.offers)
            self._offer_key_id = self._key_id()
            signer = services.offers.offer_signer
            log.info("offer key switched key_id=%s", signer.key_id if signer else None)

    def _key_id(self) -> str | None:
        signer = self.handler.offers.offer_signer
        return signer.key_id if signer is not None else None

    def _check_catalog(self) -> None:
        """Refresh the catalog snapshot; then everything that arrived before now is answerable."""
        started = time.monotonic()
        cache = self._services.catalog
        before = cache.current.revision
        try:
            catalog = cache.refresh()
        except OtaError as e:
            if not self._catalog_failing:
                log.warning(
                    "catalog refresh failed; still offering from the cached catalog "
                    "revision=%d error=%s", before, _quoted(e.detail),
                )
            self._catalog_failing = True
        except Exception:
            log.exception("catalog refresh failed unexpectedly; retrying")
        else:
            if self._catalog_failing:
                log.info("catalog refresh recovered")
            self._catalog_failing = False
            if catalog.revision != before:
                log.info("catalog reloaded revision=%d releases=%d", catalog.revision, len(catalog))
                if self.pusher is not None:
                    self.pusher.wake()
        # Also after a failure: waiting answers must not pile up while the database is
        # away, and no release can be published through it meanwhile.
        self._fresh_since = started

    def _timer_loop(self) -> None:
        period = self._settings.catalog_poll_seconds
        next_poll = time.monotonic() + period
        next_summary = time.monotonic() + SUMMARY_EVERY_SECONDS
        next_rate_log = time.monotonic() + RATE_LOG_WINDOW_SECONDS
        last_summary: dict[str, int] = {}
        while not self._stopping.is_set():
            self._timer_wake.wait(max(0.0, next_poll - time.monotonic()))
            self._timer_wake.clear()
            if self._stopping.is_set():
                break
            now = time.monotonic()
            if self._recheck or now >= next_poll:
                self._check_catalog()
                self._answer_deferred()
            if now >= next_poll:
                next_poll = now + period
                self._refresh_offer_key()
            if now >= next_rate_log:
                next_rate_log = now + RATE_LOG_WINDOW_SECONDS
                self._log_rate_window()
            if now >= next_summary:
                next_summary = now + SUMMARY_EVERY_SECONDS
                summary = self.stats.snapshot()
                if summary != last_summary:
                    last_summary = summary
                    log.info(
                        "bridge traffic %s pushed=%d registry_backlog=%d "
                        "registry_write_failures=%d registry_events_dropped=%d",
                        " ".join(f"{k}={v}" for k, v in summary.items()),
                        self.pusher.stats.pushed if self.pusher is not None else 0,
                        self._writer.backlog, self._writer.failures, self._writer.dropped,
                    )
        self._answer_deferred()

    def _log_rate_window(self) -> None:
        if self._limiter is None:
            return
        report = self._limiter.end_window()
        if report.dropped:
            log.warning(
                "rate limiting window=%gs dropped=%d devices=%d top=%s",
                RATE_LOG_WINDOW_SECONDS, report.dropped, report.devices,
                _quoted(", ".join(f"{d}:{n}" for d, n in report.top)),
            )


def _device_key(topic: str) -> str | None:
    """The device id part of ``…/devices/<id>/<kind>``, unvalidated; None when absurd.

    Only a key for the rate limiter: the handler validates the topic properly.
    """
    end = topic.rfind("/")
    start = topic.rfind("/", 0, end)
    if end <= 0 or start < 0 or end - start - 1 > 64:
        return None
    return topic[start + 1 : end]


@dataclass(frozen=True, slots=True)
class _Deferred:
    """An announcement waiting for a catalog check, with the answer the old snapshot gave."""

    topic: str
    payload: bytes
    snapshot: Catalog
    stamp: _Stamp
    result: HandlerResult
    arrival: float  # time.monotonic() when it came in, for the latency histogram


def _better_with_newer_catalog(result: HandlerResult) -> bool:
    """Answers a release published a moment ago would improve: worth a fresh catalog."""
    return result.outcome is Outcome.UP_TO_DATE or result.error == "unknown-build"


_OFFER_STATUS = {
    Outcome.UPDATE_OFFERED: "update-available",
    Outcome.UP_TO_DATE: "up-to-date",
    Outcome.ANNOUNCE_REJECTED: "error",
}


def _quiet_garbage_collector() -> None:
    """Keep full garbage collections out of the answers' latency.

    Everything loaded at start-up (modules, settings, the catalog) lives as long as
    the process, and a full collection scans all of it: ~15 ms here with the
    bridge's imports alone, long enough to show in the p99 of answers. ``gc.freeze``
    moves what exists now out of the collector's sight; collections then scan only
    what was made since.
    """
    gc.collect()
    gc.freeze()


def _count_metrics(result: HandlerResult, arrival: float | None) -> None:
    """The Prometheus side of one handled message (after its reply was handed to paho)."""
    outcome = result.outcome
    status = _OFFER_STATUS.get(outcome)
    if status is not None:
        metrics.ANNOUNCEMENTS.inc()
        if result.reply is not None:
            metrics.OFFERS.labels(status=status).inc()
            if arrival is not None:
                metrics.OFFER_LATENCY.observe(max(0.0, time.monotonic() - arrival))
    elif isinstance(result.event, StatusSeen):
        metrics.STATUS_REPORTS.labels(state=str(result.event.report.state)).inc()
    if result.error is not None:
        metrics.ERRORS.labels(kind=result.error).inc()


def _log_result(result: HandlerResult, topic: str) -> None:
    outcome = result.outcome
    if outcome is Outcome.UPDATE_OFFERED or outcome is Outcome.UP_TO_DATE:
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "announce outcome=%s device_id=%s request_id=%s build_id=%s",
                outcome, result.device_id, result.request_id, result.build_id,
            )
    elif outcome is Outcome.STATUS_RECORDED:
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "status outcome=%s device_id=%s request_id=%s build_id=%s",
                outcome, result.device_id, result.request_id, result.build_id,
            )
    elif outcome is Outcome.ANNOUNCE_REJECTED:
        # An unknown build is an expected answer, not a sign of a broken device.
        level = logging.INFO if result.error == "unknown-build" else logging.WARNING
        log.log(
            level,
            "announce outcome=%s device_id=%s request_id=%s error=%s detail=%s",
            outcome, result.device_id, result.request_id, result.error, _quoted(result.detail),
        )
    elif outcome is Outcome.STATUS_REJECTED:
        log.warning(
            "status outcome=%s device_id=%s request_id=%s error=%s detail=%s",
            outcome, result.device_id, result.request_id, result.error, _quoted(result.detail),
        )
    else:
        log.warning(
            "message outcome=%s topic=%s error=%s detail=%s",
            outcome, _quoted(topic, 200), result.error, _quoted(result.detail),
        )
