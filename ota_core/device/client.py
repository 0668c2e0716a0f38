"""The reference device client: announce over MQTT, verify, download over HTTP, install.

Two layers:

* a callback layer that never blocks the network thread: :meth:`DeviceClient.request_offer`
  returns a :class:`concurrent.futures.Future` resolved by the MQTT thread when the
  matching offer arrives, and ``on_offer`` sees every offer on the device's topic
  (including pushed ones with no request id);
* a blocking layer on top for scripts and the CLI: :meth:`~DeviceClient.connect`,
  :meth:`~DeviceClient.announce`, :meth:`~DeviceClient.install`,
  :meth:`~DeviceClient.run_once`.

Each client runs paho's own network thread (``loop_start``), so many devices can
live in one process (a fleet simulator): a device costs one thread and three file
descriptors, and devices can share one parsed public key (the ``verifier`` argument).
Offers are checked with :class:`~ota_core.verify.OfferChecker` before anything is
downloaded; status reports go to the device's status topic at QoS 1.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from ota_core.device.download import DownloadFailed, download_to, package_url
from ota_core.errors import InvalidInput, OtaError, VerificationFailed
from ota_core.identifiers import check_device_id
from ota_core.keyfiles import load_verifier
from ota_core.models import (
    Announcement,
    DeviceState,
    ErrorReply,
    Offer,
    StatusReport,
    UpdateOffer,
    UpToDate,
    load_json_object,
    parse_offer,
)
from ota_core.signing import ReleaseVerifier
from ota_core.topics import DEFAULT_PREFIX, TopicScheme
from ota_core.verify import OfferChecker, PackageDigest
from ota_core.versions import parse_version

log = logging.getLogger(__name__)

DEFAULT_BROKER_URL = "mqtt://127.0.0.1:1883"
DEFAULT_HTTP_URL = "http://127.0.0.1:8000"
DEFAULT_PUBLIC_KEY = Path("keys/public.pem")
_PAHO_PROTOCOLS = {"5": MQTTProtocolVersion.MQTTv5, "3.1.1": MQTTProtocolVersion.MQTTv311}
#: "auto": MQTT 5, and 3.1.1 when the broker refuses 5 (the embedded amqtt broker does).
PROTOCOLS = ("auto", "5", "3.1.1")
# CONNACK codes for "unsupported protocol version": MQTT 5 (0x84) and 3.1.1 (1).
_UNSUPPORTED_PROTOCOL = (0x84, 1)
_STATUS_DETAIL_MAX = 512  # StatusReport.detail limit
USER_AGENT = "ota-device/1"


# --------------------------------------------------------------------------- errors


class DeviceError(OtaError):
    """A device-side failure that is not a refused offer (broker, timeouts, usage)."""

    code = "device-error"


class BrokerUnavailable(DeviceError):
    """The broker could not be reached, refused the connection, or refused the subscription."""

    code = "connect-failed"


class OfferTimeout(DeviceError):
    """No offer answered the announcement in time."""

    code = "timeout"


class NotConnected(DeviceError):
    code = "not-connected"


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True, kw_only=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)


def parse_broker_url(url: str) -> BrokerAddress:
    """``mqtt://[user:pass@]host[:port]`` (``tcp://`` also accepted); port defaults to 1883."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
        raise InvalidInput(f"broker url {url!r} must look like mqtt://host:port")
    try:
        port = parts.port or 1883
    except ValueError as e:
        raise InvalidInput(f"broker url {url!r} has a bad port") from e
    return BrokerAddress(
        host=parts.hostname, port=port, username=parts.username, password=parts.password
    )


def _check_id(value: str | None, what: str) -> None:
    if value is not None:
        try:
            check_device_id(value)
        except InvalidInput as e:
            raise InvalidInput(f"{what}: {e.detail.removeprefix('device_id ')}") from e


@dataclass(frozen=True, kw_only=True)
class DeviceConfig:
    """Everything one device needs. Frozen: derive fleet variants with ``dataclasses.replace``."""

    device_id: str
    build_id: str
    version: str
    broker_url: str = DEFAULT_BROKER_URL
    # Base for relative offer urls such as ``/packages/x.zip``; absolute urls are used as given.
    http_base_url: str = DEFAULT_HTTP_URL
    public_key_path: Path = DEFAULT_PUBLIC_KEY
    hardware: str | None = None
    channel: str | None = None
    topic_prefix: str = DEFAULT_PREFIX
    mqtt_username: str | None = None
    mqtt_password: str | None = field(default=None, repr=False)
    # "auto" (MQTT 5, falling back to 3.1.1 if the broker refuses 5), "5" or "3.1.1".
    protocol: str = "auto"
    # Where installed packages are written; None: a fresh temporary folder on first install.
    install_dir: Path | None = None
    timeout: float = 10.0  # seconds, for each wait: connect, offer, each HTTP read
    # Keep the MQTT session (and offers published while offline) across reconnects.
    persistent_session: bool = False
    session_expiry: int = 3600  # seconds the broker keeps a persistent MQTT 5 session
    keepalive: int = 60
    client_id: str | None = None  # MQTT client id; defaults to device_id

    def __post_init__(self) -> None:
        check_device_id(self.device_id)
        _check_id(self.build_id, "build_id")
        _check_id(self.hardware, "hardware")
        _check_id(self.channel, "channel")
        parse_version(self.version)
        parse_broker_url(self.broker_url)
        TopicScheme(self.topic_prefix)
        if self.protocol not in PROTOCOLS:
            raise InvalidInput(
                f"protocol must be one of {', '.join(PROTOCOLS)}, not {self.protocol!r}"
            )
        if not self.timeout > 0:
            raise InvalidInput("timeout must be a positive number of seconds")
        if self.keepalive < 5 or self.session_expiry < 0:
            raise InvalidInput(
                "keepalive must be at least 5 seconds and session_expiry not negative"
            )


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class InstallResult:
    """What :meth:`DeviceClient.install` did. ``reason`` names the failed check, else None.

    ``reason`` is a :class:`~ota_core.errors.VerificationFailed` reason (``checksum-mismatch``,
    ``rollback``, ...), ``download-failed`` or ``install-failed``.
    """

    ok: bool
    build_id: str
    version: str
    reason: str | None = None
    detail: str | None = None
    path: Path | None = None
    sha256: str | None = None
    size: int | None = None


class OutcomeKind(StrEnum):
    INSTALLED = "installed"
    UP_TO_DATE = "up-to-date"
    ERROR_REPLY = "error-reply"  # the bridge answered with an error
    REJECTED = "rejected"  # the offer or the package failed verification
    DOWNLOAD_FAILED = "download-failed"
    INSTALL_FAILED = "install-failed"
    TIMEOUT = "timeout"  # no offer in time
    CONNECT_FAILED = "connect-failed"


@dataclass(frozen=True)
class Outcome:
    """What one :meth:`DeviceClient.run_once` round came to.

    ``build_id``/``version`` are the device's own after the round; ``offered_*`` the
    target named by the offer; ``reason`` the error code or failed check.
    """

    kind: OutcomeKind
    device_id: str
    build_id: str
    version: str
    request_id: str | None = None
    offered_build_id: str | None = None
    offered_version: str | None = None
    reason: str | None = None
    detail: str | None = None
    path: Path | None = None
    sha256: str | None = None

    @property
    def ok(self) -> bool:
        return self.kind in (OutcomeKind.INSTALLED, OutcomeKind.UP_TO_DATE)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "outcome": self.kind.value,
            "ok": self.ok,
            "device_id": self.device_id,
            "build_id": self.build_id,
            "version": self.version,
            "request_id": self.request_id,
            "offered_build_id": self.offered_build_id,
            "offered_version": self.offered_version,
            "reason": self.reason,
            "detail": self.detail,
            "path": str(self.path) if self.path is not None else None,
            "sha256": self.sha256,
        }
        return {k: v for k, v in data.items() if v is not None}

    def message(self) -> str:
        """One line for a human."""
        me = self.device_id
        offered = f"{self.offered_build_id} ({self.offered_version})"
        match self.kind:
            case OutcomeKind.INSTALLED:
                return f"{me}: installed {offered} at {self.path}"
            case OutcomeKind.UP_TO_DATE:
                return f"{me}: up to date at {self.build_id} ({self.version})"
            case OutcomeKind.ERROR_REPLY:
                return f"{me}: the bridge answered with error {self.reason}: {self.detail}"
            case OutcomeKind.REJECTED:
                return f"{me}: refused the update to {offered}: {self.detail}"
            case OutcomeKind.DOWNLOAD_FAILED | OutcomeKind.INSTALL_FAILED:
                return f"{me}: could not install {offered}: {self.detail}"
            case _:
                return f"{me}: {self.reason}: {self.detail}"


# --------------------------------------------------------------------------- the client


@dataclass
class _Pending:
    future: Future[Offer]
    payload: bytes


class DeviceClient:
    """One device. Use as a context manager (connects on enter, closes on exit)::

        with DeviceClient(config) as device:
            outcome = device.run_once()

    ``verifier`` lets many devices share one parsed public key (else it is read
    from ``config.public_key_path``). ``on_offer`` is called from the MQTT thread
    with every valid offer on this device's topic; it must not block.

    Announcing is thread-safe; :meth:`install` changes the device's build and
    version, so run one install at a time per device.
    """

    def __init__(
        self,
        config: DeviceConfig,
        *,
        verifier: ReleaseVerifier | None = None,
        on_offer: Callable[[Offer], None] | None = None,
    ) -> None:
        self.config = config
        self.verifier = verifier if verifier is not None else load_verifier(config.public_key_path)
        self.on_offer = on_offer
        self.build_id = config.build_id
        self.version = config.version
        self._install_dir = config.install_dir
        topics = TopicScheme(config.topic_prefix)
        self.offer_topic = str(topics.offer(config.device_id))
        self.announce_topic = str(topics.announce(config.device_id))
        self.status_topic = str(topics.status(config.device_id))
        self._address = parse_broker_url(config.broker_url)

        self._lock = threading.Lock()
        self._state = threading.Condition(self._lock)
        self._subscribed = False  # connected and subscribed to the offer topic
        self._connect_error: str | None = None
        self._subscribe_mid: int | None = None
        self._pending: dict[str, _Pending] = {}
        self._unsent: list[str] = []  # request ids waiting for the subscription
        self._in_flight: list[mqtt.MQTTMessageInfo] = []
        self._protocol_refused = False
        self._stopping = False
        self._started = False
        self._closed = False
        #: The MQTT version in use ("5" or "3.1.1"); "auto" settles on connect.
        self.protocol = "3.1.1" if config.protocol == "3.1.1" else "5"
        self._mqtt = self._make_mqtt_client()

    # ----------------------------------------------------------------- connection

    def _make_mqtt_client(self) -> mqtt.Client:
        cfg = self.config
        protocol = _PAHO_PROTOCOLS[self.protocol]
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id or cfg.device_id,
            # MQTT 5 takes clean_start at connect() instead.
            clean_session=None
            if protocol == MQTTProtocolVersion.MQTTv5
            else not cfg.persistent_session,
            protocol=protocol,
        )
        username = cfg.mqtt_username or self._address.username
        password = cfg.mqtt_password or self._address.password
        if username is not None:
            client.username_pw_set(username, password)
        client.connect_timeout = cfg.timeout
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_socket_open = self._on_socket_open
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        return client

    @property
    def paho_client(self) -> mqtt.Client:
        """The underlying paho client, for simulators that need to misbehave (drop, stall)."""
        return self._mqtt

    @property
    def connected(self) -> bool:
        """True once connected and subscribed to the offer topic."""
        return self._subscribed

    def connect(self, timeout: float | None = None) -> None:
        """Connect and subscribe to the offer topic; return once the broker confirmed both."""
        if self._closed:
            raise DeviceError("this client is closed; make a new one")
        if self._started:
            self.wait_ready(timeout)
            return
        try:
            self._start(timeout)
        except BrokerUnavailable:
            if not (self._protocol_refused and self.config.protocol == "auto"):
                raise
            log.info("%s: the broker refused MQTT 5; using 3.1.1", self.config.device_id)
            self.protocol = "3.1.1"
            self._protocol_refused = False
            self._mqtt = self._make_mqtt_client()
            self._start(timeout)

    def _start(self, timeout: float | None) -> None:
        cfg = self.config
        wait = cfg.timeout if timeout is None else timeout
        clean_start: bool | Literal[3] = mqtt.MQTT_CLEAN_START_FIRST_ONLY
        properties = None
        if self.protocol == "5":
            clean_start = not cfg.persistent_session
            if cfg.persistent_session:
                properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                properties.SessionExpiryInterval = cfg.session_expiry
        try:
            self._mqtt.connect(
                self._address.host,
                self._address.port,
                keepalive=cfg.keepalive,
                clean_start=clean_start,
                properties=properties,
            )
        except (OSError, ValueError) as e:
            raise BrokerUnavailable(f"cannot reach the MQTT broker at {cfg.broker_url}: {e}") from e
        self._started = True
        self._mqtt.loop_start()
        try:
            self.wait_ready(wait)
        except DeviceError:
            # Back to square one, so connect() can be tried again later.
            self._stop_network()
            self._started = False
            with self._state:
                self._connect_error = None
            raise

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until connected and subscribed (e.g. after a broker restart)."""
        wait = self.config.timeout if timeout is None else timeout
        with self._state:
            self._state.wait_for(lambda: self._subscribed or self._connect_error is not None, wait)
            subscribed, error = self._subscribed, self._connect_error
        if error is not None:
            raise BrokerUnavailable(error)
        if not subscribed:
            raise BrokerUnavailable(
                f"the MQTT broker at {self.config.broker_url} did not accept the connection "
                f"and subscription within {wait:g}s"
            )

    def close(self, timeout: float | None = None) -> None:
        """Flush status reports still in flight (bounded), disconnect, stop the network thread."""
        if self._closed:
            return
        self._closed = True
        if self._started:
            self._flush(self.config.timeout if timeout is None else timeout)
            self._stop_network()
        with self._lock:
            pending, self._pending = self._pending, {}
            self._unsent.clear()
        for item in pending.values():
            _settle(item.future, NotConnected("the device client was closed"))

    def _stop_network(self) -> None:
        self._stopping = True  # our own disconnect: not worth a log line
        try:
            self._mqtt.disconnect()
            self._mqtt.loop_stop()
        finally:
            self._stopping = False
        with self._state:
            self._subscribed = False

    def _flush(self, timeout: float) -> None:
        with self._lock:
            in_flight, self._in_flight = self._in_flight, []
        deadline = _Deadline(timeout)
        for info in in_flight:
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(deadline.left())

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ----------------------------------------------------------------- paho callbacks (MQTT thread)

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # Offers and status reports are small and latency-bound: no Nagle delay.
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            with self._state:
                self._protocol_refused = reason_code.value in _UNSUPPORTED_PROTOCOL
                self._connect_error = (
                    f"the MQTT broker at {self.config.broker_url} refused the connection: "
                    f"{reason_code}"
                )
                self._state.notify_all()
            return
        # Subscribe on every (re)connect: cheap, and a clean session has lost it. The
        # SUBACK is read by this same thread, so it cannot overtake the mid stored here.
        result, mid = client.subscribe(self.offer_topic, qos=1)
        with self._state:
            self._connect_error = None
            self._subscribe_mid = mid
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.warning(
                "%s: subscribe to %s failed: %s", self.config.device_id, self.offer_topic, result
            )

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        with self._state:
            if mid != self._subscribe_mid:
                return
            if any(rc.is_failure for rc in reason_codes):
                self._connect_error = (
                    f"the MQTT broker refused the subscription to {self.offer_topic}: "
                    f"{', '.join(str(rc) for rc in reason_codes)}"
                )
                ready_to_send: list[tuple[str, bytes]] = []
            else:
                self._subscribed = True
                ready_to_send = [
                    (rid, self._pending[rid].payload)
                    for rid in self._unsent
                    if rid in self._pending
                ]
                self._unsent.clear()
            self._state.notify_all()
        # Announcements asked for before the subscription was confirmed go out now, so
        # their offers cannot be missed.
        for _rid, payload in ready_to_send:
            self._publish(self.announce_topic, payload)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._state:
            self._subscribed = False
        if not (self._closed or self._stopping):
            log.info(
                "%s: disconnected from the broker (%s); paho reconnects",
                self.config.device_id,
                reason_code,
            )

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic != self.offer_topic:
            return
        try:
            offer = parse_offer(bytes(message.payload))
        except InvalidInput as e:
            self._on_bad_offer(bytes(message.payload), e)
            return
        pending = None
        if offer.request_id is not None:
            with self._lock:
                pending = self._pending.pop(offer.request_id, None)
        if pending is not None:
            _settle(pending.future, offer)
        elif offer.request_id is not None:
            log.debug(
                "%s: offer for request %s is not ours now", self.config.device_id, offer.request_id
            )
        if self.on_offer is not None:
            try:
                self.on_offer(offer)
            except Exception:  # a user hook must never kill the network thread
                log.exception("%s: on_offer hook failed", self.config.device_id)

    def _on_bad_offer(self, payload: bytes, error: InvalidInput) -> None:
        # An unreadable offer that names one of our requests fails that request at once,
        # instead of leaving it to time out; anything else is only logged.
        request_id = None
        with contextlib.suppress(InvalidInput):
            value = load_json_object(payload, "offer", 64 * 1024).get("request_id")
            request_id = value if isinstance(value, str) else None
        with self._lock:
            pending = self._pending.pop(request_id, None) if request_id is not None else None
        if pending is None:
            log.warning("%s: ignoring a malformed offer: %s", self.config.device_id, error.detail)
        else:
            _settle(pending.future, VerificationFailed("malformed-offer", error.detail))

    # ----------------------------------------------------------------- publishing

    def _publish(self, topic: str, payload: bytes) -> None:
        info = self._mqtt.publish(topic, payload, qos=1)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            log.warning("%s: publish to %s failed: %s", self.config.device_id, topic, info.rc)
            return
        # NO_CONN: paho keeps QoS 1 messages and sends them after reconnecting.
        with self._lock:
            self._in_flight = [i for i in self._in_flight if not i.is_published()]
            self._in_flight.append(info)

    def report(
        self,
        state: DeviceState,
        build_id: str,
        detail: str | None = None,
        request_id: str | None = None,
    ) -> StatusReport:
        """Publish a status report on this device's status topic (QoS 1)."""
        status = StatusReport(
            state=state,
            build_id=build_id,
            detail=detail[:_STATUS_DETAIL_MAX] if detail is not None else None,
            request_id=request_id,
        )
        self._publish(self.status_topic, status.to_bytes())
        return status

    # ----------------------------------------------------------------- announce

    def announcement(self, request_id: str | None = None) -> Announcement:
        return Announcement(
            build_id=self.build_id,
            version=self.version,
            hardware=self.config.hardware,
            channel=self.config.channel,
            request_id=request_id,
            device_id=self.config.device_id,
        )

    def request_offer(self, request_id: str | None = None) -> tuple[str, Future[Offer]]:
        """Announce without blocking; the future resolves with the offer answering ``request_id``.

        The announcement is published only once the offer subscription is confirmed,
        so the answer cannot be missed. Offers for other request ids are ignored.
        """
        if self._closed or not self._started:
            raise NotConnected("connect() the device before announcing")
        rid = request_id if request_id is not None else secrets.token_hex(8)
        payload = self.announcement(rid).to_bytes()
        future: Future[Offer] = Future()
        future.set_running_or_notify_cancel()
        with self._lock:
            self._pending[rid] = _Pending(future, payload)
            send_now = self._subscribed
            if not send_now:
                self._unsent.append(rid)
        if send_now:
            self._publish(self.announce_topic, payload)
        return rid, future

    def forget(self, request_id: str) -> None:
        """Stop waiting for the offer answering ``request_id``."""
        with self._lock:
            self._pending.pop(request_id, None)
            if request_id in self._unsent:
                self._unsent.remove(request_id)

    def announce(self, request_id: str | None = None, timeout: float | None = None) -> Offer:
        """Announce and block until the answering offer arrives (any of the three kinds).

        Raises :class:`OfferTimeout` when none comes in time and
        :class:`~ota_core.errors.VerificationFailed` (``malformed-offer``) when the
        answer cannot be read.
        """
        wait = self.config.timeout if timeout is None else timeout
        rid, future = self.request_offer(request_id)
        try:
            return future.result(wait)
        except FutureTimeout as e:
            self.forget(rid)
            raise OfferTimeout(
                f"no offer for request {rid} within {wait:g}s on {self.offer_topic}; "
                f"is the bridge running and connected to {self.config.broker_url}?"
            ) from e

    # ----------------------------------------------------------------- install

    def checker(self) -> OfferChecker:
        return OfferChecker(
            verifier=self.verifier,
            device_id=self.config.device_id,
            installed_version=self.version,
            hardware=self.config.hardware,
        )

    def install_dir(self) -> Path:
        if self._install_dir is None:
            self._install_dir = Path(
                tempfile.mkdtemp(prefix=f"ota-device-{self.config.device_id}-")
            )
        self._install_dir.mkdir(parents=True, exist_ok=True)
        return self._install_dir

    def install(self, offer: UpdateOffer, expected_request_id: str | None = None) -> InstallResult:
        """Verify ``offer``, download, check and install its package, reporting each step.

        Never raises for a bad offer, package or download: the result names the reason
        and a ``failed`` status (detail ``"<reason>: <message>"``) has been reported.
        """
        rid = offer.request_id
        target = offer.build_id
        try:
            manifest = self.checker().check(offer, expected_request_id)
        except VerificationFailed as e:
            return self._failed(offer, e.reason, e.detail)
        try:
            url = package_url(self.config.http_base_url, offer.url)
        except DownloadFailed as e:
            return self._failed(offer, e.code, f"{e.code}: {e.detail}")
        try:
            folder = self.install_dir()
            fd, tmp_name = tempfile.mkstemp(
                prefix=f".{manifest.filename}.", suffix=".part", dir=folder
            )
        except OSError as e:
            return self._failed(offer, "install-failed", f"install-failed: {e}")
        tmp = Path(tmp_name)
        final = folder / manifest.filename  # a validated plain file name: no traversal
        try:
            with os.fdopen(fd, "wb") as out:
                self.report(DeviceState.DOWNLOADING, target, request_id=rid)
                digest = PackageDigest(manifest.size, manifest.sha256)
                download_to(url, digest, out, self.config.timeout, USER_AGENT)
                self.report(DeviceState.VERIFYING, target, request_id=rid)
                sha256 = digest.finish()
                self.report(DeviceState.INSTALLING, target, request_id=rid)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, final)  # atomic: the old package or the new one, never half of one
            _fsync_dir(folder)
        except VerificationFailed as e:
            tmp.unlink(missing_ok=True)
            return self._failed(offer, e.reason, e.detail)
        except DownloadFailed as e:
            tmp.unlink(missing_ok=True)
            return self._failed(offer, e.code, f"{e.code}: {e.detail}")
        except OSError as e:
            tmp.unlink(missing_ok=True)
            return self._failed(offer, "install-failed", f"install-failed: {e}")
        self.build_id, self.version = manifest.build_id, manifest.version
        self.report(DeviceState.INSTALLED, target, request_id=rid)
        log.info(
            "%s: installed %s (%s) at %s", self.config.device_id, target, manifest.version, final
        )
        return InstallResult(
            ok=True,
            build_id=manifest.build_id,
            version=manifest.version,
            path=final,
            sha256=sha256,
            size=manifest.size,
        )

    def _failed(self, offer: UpdateOffer, reason: str, detail: str) -> InstallResult:
        # INFO: the caller gets the reason in the result; the CLI prints it once.
        log.info("%s: refusing %s: %s", self.config.device_id, offer.build_id, detail)
        self.report(DeviceState.FAILED, offer.build_id, detail, offer.request_id)
        return InstallResult(
            ok=False, build_id=offer.build_id, version=offer.version, reason=reason, detail=detail
        )

    # ----------------------------------------------------------------- one round

    def run_once(self, request_id: str | None = None, timeout: float | None = None) -> Outcome:
        """Connect if needed, announce, install when offered; report what happened."""
        me = self.config.device_id
        try:
            self.connect()
        except BrokerUnavailable as e:
            return self._outcome(OutcomeKind.CONNECT_FAILED, reason=e.code, detail=e.detail)
        rid = request_id if request_id is not None else secrets.token_hex(8)
        try:
            offer = self.announce(rid, timeout)
        except OfferTimeout as e:
            return self._outcome(OutcomeKind.TIMEOUT, rid, reason=e.code, detail=e.detail)
        except VerificationFailed as e:
            return self._outcome(OutcomeKind.REJECTED, rid, reason=e.reason, detail=e.detail)
        if isinstance(offer, ErrorReply):
            return self._outcome(
                OutcomeKind.ERROR_REPLY, rid, reason=offer.error, detail=offer.detail
            )
        if isinstance(offer, UpToDate):
            log.info("%s: up to date", me)
            return self._outcome(OutcomeKind.UP_TO_DATE, rid)
        result = self.install(offer, expected_request_id=rid)
        if result.ok:
            kind = OutcomeKind.INSTALLED
        elif result.reason == DownloadFailed.code:
            kind = OutcomeKind.DOWNLOAD_FAILED
        elif result.reason == "install-failed":
            kind = OutcomeKind.INSTALL_FAILED
        else:
            kind = OutcomeKind.REJECTED
        return self._outcome(
            kind,
            rid,
            offered_build_id=offer.build_id,
            offered_version=offer.version,
            reason=result.reason,
            detail=result.detail,
            path=result.path,
            sha256=result.sha256,
        )

    def _outcome(self, kind: OutcomeKind, request_id: str | None = None, **fields: Any) -> Outcome:
        return Outcome(
            kind=kind,
            device_id=self.config.device_id,
            build_id=self.build_id,
            version=self.version,
            request_id=request_id,
            **fields,
        )


def _settle(future: Future[Offer], outcome: Offer | BaseException) -> None:
    # Futures are made RUNNING (so callers cannot cancel them); still, never let a
    # settled one raise InvalidStateError in the network thread.
    with contextlib.suppress(InvalidStateError):
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self._end - time.monotonic())


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not every platform lets a folder be opened.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
