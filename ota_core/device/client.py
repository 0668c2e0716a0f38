"""The reference device client: announce over MQTT, verify, download over HTTP, install.

Two layers:

* a callback layer that never blocks the network thread: :meth:`DeviceClient.request_offer`
  returns a :class:`concurrent.futures.Future` resolved by the MQTT thread when the
  matching offer arrives; ``on_offer`` sees every offer on the device's topic, and
  offers pushed without a request (no ``request_id``, envelope nonce null) are queued
  for :meth:`~DeviceClient.listen` or handed to ``on_push``;
* a blocking layer on top for scripts and the CLI: :meth:`~DeviceClient.connect`,
  :meth:`~DeviceClient.announce`, :meth:`~DeviceClient.handle`,
  :meth:`~DeviceClient.install`, :meth:`~DeviceClient.run_once`, :meth:`~DeviceClient.listen`.

Every offer goes through :class:`~ota_core.verify.OfferChecker` before anything is
downloaded, in the order of issue 3: envelope signature (a trusted offer key, see
:mod:`ota_core.device.trust`), device id, nonce, expiry, manifest hash, manifest
signature, fields against the manifest, checksum signature, hardware, version and
release counter; then the download is capped at the signed size and its SHA-256
checked. Up-to-date and error replies are checked too (envelope, device, nonce,
expiry): a forged "up to date" would freeze a device on old firmware.

What the device has installed is kept in ``<install_dir>/state.json``
(:mod:`ota_core.device.state`); its release counter is the anti-rollback floor.

Networking: by default each client runs paho's own network thread (``loop_start``):
right for one device, wrong for hundreds (a thread each, and paho's ``select()``
cannot watch file descriptors past 1023, so a process tops out near 340 such
clients). A fleet simulator passes ``loop=`` (a shared :class:`~ota_core.device.netloop.MqttLoop`:
many clients, one thread) or ``connection=`` (one MQTT connection for many device ids),
and shares one :class:`~ota_core.device.download.HttpPool`, one parsed release key and
one :class:`~ota_core.device.trust.OfferKeyring` between devices.
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
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, TypeVar
from urllib.parse import urlsplit, urlunsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from ota_core.device.download import USER_AGENT, DownloadFailed, HttpPool, package_url
from ota_core.device.netloop import MqttLoop, SharedConnection
from ota_core.device.state import InstalledState, fsync_dir, load_state, save_state
from ota_core.device.trust import OfferKeyring, claimed_key_id
from ota_core.errors import InvalidInput, OtaError, VerificationFailed
from ota_core.identifiers import check_device_id
from ota_core.keyfiles import load_verifier
from ota_core.models import (
    Announcement,
    DeviceState,
    ErrorReply,
    Offer,
    ReleaseManifest,
    StatusReport,
    UpdateOffer,
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
_MAX_STRAYS = 4  # offers answering other requests, kept per pending request
_MAX_QUEUED_PUSHES = 16  # pushed offers waiting for listen(); older ones are dropped
#: Reason of a refusal that makes the device announce again (once) for a fresh offer.
RETRY_REASON = "expired"

_T = TypeVar("_T")

#: Applies a verified package: (manifest, the package file or None when not stored).
#: Raise :class:`InstallFailed` (or anything) to report the install as failed.
Installer = Callable[[ReleaseManifest, Path | None], None]


# --------------------------------------------------------------------------- errors


class DeviceError(OtaError):
    """A device-side failure that is not a refused offer (broker, timeouts, usage)."""

    code = "device-error"


class BrokerUnavailable(DeviceError):
    """The broker could not be reached, refused the connection, or refused the subscription."""

    code = "connect-failed"


class OfferTimeout(DeviceError):
    """No offer answered the announcement in time.

    ``strays`` holds offers that arrived meanwhile answering *other* requests (a
    replayed offer, another device's offer): the caller refuses the first of them.
    """

    code = "timeout"

    def __init__(self, detail: str, strays: tuple[Offer, ...] = ()) -> None:
        super().__init__(detail)
        self.strays = strays


class NotConnected(DeviceError):
    code = "not-connected"


class InstallFailed(DeviceError):
    """Raised by an installer hook: the verified package could not be applied."""

    code = "install-failed"


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


def _check_http_url(value: str, what: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"{what} {value!r} must look like http://host:port")


@dataclass(frozen=True, kw_only=True)
class DeviceConfig:
    """Everything one device needs. Frozen: derive fleet variants with ``dataclasses.replace``.

    ``build_id``/``version`` are what the device runs when it has no ``state.json`` in
    ``install_dir`` yet; once it has installed something, the state file wins.
    """

    device_id: str
    build_id: str
    version: str
    broker_url: str = DEFAULT_BROKER_URL
    # Base for relative offer urls such as ``/packages/x.zip``; absolute urls are used as given.
    http_base_url: str = DEFAULT_HTTP_URL
    # The pinned release key: verifies manifests, checksums and offer-key certificates.
    public_key_path: Path = DEFAULT_PUBLIC_KEY
    hardware: str | None = None
    channel: str | None = None
    topic_prefix: str = DEFAULT_PREFIX
    mqtt_username: str | None = None
    mqtt_password: str | None = field(default=None, repr=False)
    # "auto" (MQTT 5, falling back to 3.1.1 if the broker refuses 5), "5" or "3.1.1".
    protocol: str = "auto"
    # Where installed packages and state.json are written; None: a fresh temporary
    # folder on first install, and no state kept across runs.
    install_dir: Path | None = None
    timeout: float = 10.0  # seconds, for each wait: connect, offer, each HTTP read
    # Keep the MQTT session (and offers published while offline) across reconnects.
    persistent_session: bool = False
    session_expiry: int = 3600  # seconds the broker keeps a persistent MQTT 5 session
    keepalive: int = 60
    client_id: str | None = None  # MQTT client id; defaults to device_id
    # Trusted offer keys: a pinned keyring file (GET /keys JSON or keys/offer-keys.json)...
    offer_keys_path: Path | None = None
    # ...or, by default, GET this URL (default {http_base_url}/keys), keeping only keys
    # certified by the release key.
    keys_url: str | None = None
    # Accept offers without a signed envelope (a seed-era server with no offer key).
    # Turns off the device-binding, replay and expiry checks: never in production.
    insecure_unsealed: bool = False
    # Keep state.json in install_dir (only when install_dir is given).
    persist_state: bool = True
    # False: stream the download through the checks without writing it (simulators).
    store_packages: bool = True
    # False: verify the offer but skip the download, as if the package had checked out
    # (benchmarks of the MQTT path only: size and SHA-256 are then NOT verified).
    download: bool = True

    def __post_init__(self) -> None:
        check_device_id(self.device_id)
        _check_id(self.build_id, "build_id")
        _check_id(self.hardware, "hardware")
        _check_id(self.channel, "channel")
        parse_version(self.version)
        parse_broker_url(self.broker_url)
        _check_http_url(self.http_base_url, "http url")
        if self.keys_url is not None:
            _check_http_url(self.keys_url, "keys url")
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
        if self.insecure_unsealed and self.offer_keys_path is not None:
            raise InvalidInput("insecure_unsealed and offer_keys_path contradict each other")

    @property
    def broker_for_messages(self) -> str:
        """The broker URL with any password in it masked, for logs and error messages."""
        parts = urlsplit(self.broker_url)
        if parts.password is None:
            return self.broker_url
        netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))

    @property
    def resolved_keys_url(self) -> str:
        return self.keys_url or self.http_base_url.rstrip("/") + "/keys"


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
    REJECTED = "rejected"  # the offer (or reply) or the package failed verification
    DOWNLOAD_FAILED = "download-failed"
    INSTALL_FAILED = "install-failed"
    TIMEOUT = "timeout"  # no offer in time
    CONNECT_FAILED = "connect-failed"


@dataclass(frozen=True)
class Outcome:
    """What one offer (or one :meth:`DeviceClient.run_once` round) came to.

    ``build_id``/``version`` are the device's own after the round; ``offered_*`` the
    target named by the offer; ``reason`` the error code or failed check; ``retried``
    the reason an earlier offer was refused before the device announced again
    (``expired``); ``pushed`` is True for an offer that answered no request.
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
    retried: str | None = None
    pushed: bool = False

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
            "retried": self.retried,
            "pushed": self.pushed or None,
        }
        return {k: v for k, v in data.items() if v is not None}

    def message(self) -> str:
        """One line for a human."""
        me = self.device_id
        offered = f"{self.offered_build_id} ({self.offered_version})"
        match self.kind:
            case OutcomeKind.INSTALLED:
                where = f" at {self.path}" if self.path is not None else ""
                pushed = " (pushed)" if self.pushed else ""
                return f"{me}: installed {offered}{pushed}{where}"
            case OutcomeKind.UP_TO_DATE:
                return f"{me}: up to date at {self.build_id} ({self.version})"
            case OutcomeKind.ERROR_REPLY:
                return f"{me}: the bridge answered with error {self.reason}: {self.detail}"
            case OutcomeKind.REJECTED if self.offered_build_id is not None:
                return f"{me}: refused the update to {offered}: {self.detail}"
            case OutcomeKind.REJECTED:
                return f"{me}: refused the reply: {self.detail}"
            case OutcomeKind.DOWNLOAD_FAILED | OutcomeKind.INSTALL_FAILED:
                return f"{me}: could not install {offered}: {self.detail}"
            case _:
                return f"{me}: {self.reason}: {self.detail}"


@dataclass(frozen=True)
class ListenResult:
    """What :meth:`DeviceClient.listen` did: every outcome, and why it stopped."""

    outcomes: tuple[Outcome, ...]
    installs: int
    stopped: Literal["max-installs", "duration", "stopped"]


# --------------------------------------------------------------------------- the client


@dataclass
class _Pending:
    future: Future[Offer]
    payload: bytes
    strays: list[Offer] = field(default_factory=list)


class DeviceClient:
    """One device. Use as a context manager (connects on enter, closes on exit)::

        with DeviceClient(config) as device:
            outcome = device.run_once()

    Sharing between many devices (fleet simulators): ``verifier`` (one parsed release
    key), ``keyring`` (one offer keyring, fetched once), ``http`` (one connection pool),
    and either ``loop`` (one network thread for many clients) or ``connection`` (one
    MQTT connection for many device ids; brokers without per-device ACLs only).

    Hooks, all called from the MQTT thread except ``installer``; none may block:
    ``on_offer`` with every readable offer on this device's topic, ``on_push`` with
    pushed update offers (instead of queueing them for :meth:`listen`), ``on_status``
    with every status report sent. ``installer`` applies a verified package (raise to
    fail the install); it runs in the installing thread.

    Announcing is thread-safe; handling offers is serialized per device.
    """

    def __init__(
        self,
        config: DeviceConfig,
        *,
        verifier: ReleaseVerifier | None = None,
        on_offer: Callable[[Offer], None] | None = None,
        keyring: OfferKeyring | None = None,
        http: HttpPool | None = None,
        loop: MqttLoop | None = None,
        connection: SharedConnection | None = None,
        on_push: Callable[[UpdateOffer], None] | None = None,
        on_status: Callable[[StatusReport], None] | None = None,
        installer: Installer | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if loop is not None and connection is not None:
            raise ValueError("pass loop or connection, not both")
        self.config = config
        self.verifier = verifier if verifier is not None else load_verifier(config.public_key_path)
        self.on_offer = on_offer
        self.on_push = on_push
        self.on_status = on_status
        self.installer = installer
        self.clock = clock
        self._owns_http = http is None
        self.http = http if http is not None else HttpPool(2, USER_AGENT)
        self.keyring = keyring if keyring is not None else self._default_keyring()

        # What runs now: the state file if there is one, else the configuration.
        state = (
            load_state(config.install_dir)
            if config.persist_state and config.install_dir is not None
            else None
        )
        self.state_loaded = state is not None
        self.build_id = state.build_id if state else config.build_id
        self.version = state.version if state else config.version
        self.release_counter: int | None = state.release_counter if state else None
        self.sha256: str | None = state.sha256 if state else None
        if state is not None and (state.build_id, state.version) != (
            config.build_id,
            config.version,
        ):
            log.info(
                "%s: state.json says %s (%s); it overrides the configured %s (%s)",
                config.device_id,
                state.build_id,
                state.version,
                config.build_id,
                config.version,
            )

        self._install_dir = config.install_dir
        topics = TopicScheme(config.topic_prefix)
        self.offer_topic = str(topics.offer(config.device_id))
        self.announce_topic = str(topics.announce(config.device_id))
        self.status_topic = str(topics.status(config.device_id))
        self._address = parse_broker_url(config.broker_url)
        self._loop = loop
        self._connection = connection

        self._lock = threading.Lock()
        self._state = threading.Condition(self._lock)
        self._install_lock = threading.RLock()
        self._subscribed = False  # connected and subscribed to the offer topic
        self._ever_ready = False
        self._connect_error: str | None = None
        self._subscribe_mid: int | None = None
        self._pending: dict[str, _Pending] = {}
        self._unsent: list[str] = []  # request ids waiting for the subscription
        self._in_flight: list[mqtt.MQTTMessageInfo] = []
        self._pushes: deque[UpdateOffer] = deque(maxlen=_MAX_QUEUED_PUSHES)
        self._push_ready = threading.Condition(self._lock)
        self._protocol_refused = False
        self._stopping = False
        self._started = False
        self._closed = False
        #: The MQTT version in use ("5" or "3.1.1"); "auto" settles on connect.
        if connection is not None:
            self.protocol = connection.protocol
            self._mqtt = connection.client
        else:
            self.protocol = "3.1.1" if config.protocol == "3.1.1" else "5"
            self._mqtt = self._make_mqtt_client()

    def _default_keyring(self) -> OfferKeyring | None:
        cfg = self.config
        if cfg.insecure_unsealed:
            log.warning(
                "%s: --insecure-unsealed: offers are NOT checked for device binding, "
                "replay or expiry",
                cfg.device_id,
            )
            return None
        if cfg.offer_keys_path is not None:
            return OfferKeyring.pinned(cfg.offer_keys_path)
        return OfferKeyring.certified(
            self.verifier, cfg.resolved_keys_url, self.http, timeout=cfg.timeout
        )

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
        """The underlying paho client, for simulators that need to misbehave (drop, stall).
        With ``connection=`` it is the shared one."""
        return self._mqtt

    @property
    def connected(self) -> bool:
        """True once connected and subscribed to the offer topic."""
        return self._subscribed

    def connect(self, timeout: float | None = None) -> None:
        """Fetch the offer keys (first time only), connect and subscribe to the offer topic;
        return once the broker confirmed both."""
        if self._closed:
            raise DeviceError("this client is closed; make a new one")
        if self.keyring is not None:
            self.keyring.ensure_loaded()
        if self._started:
            self.wait_ready(timeout)
            return
        if self._connection is not None:
            self._start_shared(timeout)
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

    def _start_shared(self, timeout: float | None) -> None:
        assert self._connection is not None
        wait = self.config.timeout if timeout is None else timeout
        try:
            self._connection.start(wait)
        except OSError as e:
            raise BrokerUnavailable(
                f"cannot reach the MQTT broker at {self.config.broker_for_messages}: {e}"
            ) from e
        except RuntimeError as e:
            raise BrokerUnavailable(str(e)) from e
        self._connection.register(self.offer_topic, self._on_message)
        self._started = True
        self._mark_subscribed()

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
        if self._loop is not None:
            self._mqtt.connect_async(
                self._address.host,
                self._address.port,
                keepalive=cfg.keepalive,
                clean_start=clean_start,
                properties=properties,
            )
            self._started = True
            self._loop.attach(self._mqtt, self._on_loop_error)
        else:
            try:
                self._mqtt.connect(
                    self._address.host,
                    self._address.port,
                    keepalive=cfg.keepalive,
                    clean_start=clean_start,
                    properties=properties,
                )
            except (OSError, ValueError) as e:
                raise BrokerUnavailable(
                    f"cannot reach the MQTT broker at {cfg.broker_for_messages}: {e}"
                ) from e
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

    def _on_loop_error(self, message: str) -> None:
        with self._state:
            if self._ever_ready:
                log.info("%s: %s; retrying", self.config.device_id, message)
                return
            self._connect_error = message.replace(
                "the MQTT broker", f"the MQTT broker at {self.config.broker_for_messages}"
            )
            self._state.notify_all()

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
                f"the MQTT broker at {self.config.broker_for_messages} did not accept "
                f"the connection and subscription within {wait:g}s"
            )

    def close(self, timeout: float | None = None) -> None:
        """Flush status reports still in flight (bounded), disconnect, stop the network."""
        if self._closed:
            return
        self._closed = True
        if self._started:
            self._flush(self.config.timeout if timeout is None else timeout)
            self._stop_network()
        with self._lock:
            pending, self._pending = self._pending, {}
            self._unsent.clear()
            self._push_ready.notify_all()
        for item in pending.values():
            _settle(item.future, NotConnected("the device client was closed"))
        if self._owns_http:
            self.http.close()

    def _stop_network(self) -> None:
        self._stopping = True  # our own disconnect: not worth a log line
        try:
            if self._connection is not None:
                self._connection.unregister(self.offer_topic)
            elif self._loop is not None:
                self._loop.detach(self._mqtt, self.config.timeout)
            else:
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
                    f"the MQTT broker at {self.config.broker_for_messages} refused the connection: "
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
                self._state.notify_all()
                return
        self._mark_subscribed()

    def _mark_subscribed(self) -> None:
        with self._state:
            self._subscribed = True
            self._ever_ready = True
            ready_to_send = [
                self._pending[rid].payload for rid in self._unsent if rid in self._pending
            ]
            self._unsent.clear()
            self._state.notify_all()
        # Announcements asked for before the subscription was confirmed go out now, so
        # their offers cannot be missed.
        for payload in ready_to_send:
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
                "%s: disconnected from the broker (%s); reconnecting",
                self.config.device_id,
                reason_code,
            )

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic != self.offer_topic:
            return
        payload = bytes(message.payload)
        try:
            offer = parse_offer(payload)
        except InvalidInput as e:
            self._on_bad_offer(payload, e)
            return
        if self.on_offer is not None:  # first: it sees the offer before anyone acts on it
            try:
                self.on_offer(offer)
            except Exception:  # a user hook must never kill the network thread
                log.exception("%s: on_offer hook failed", self.config.device_id)
        self._route(offer)

    def _route(self, offer: Offer) -> None:
        """Give ``offer`` to the request it answers, or queue it as a push, or keep it as a
        stray (answering a request that is not ours now) for the waiting request's verdict."""
        nonce = _claimed_nonce(offer.envelope)
        is_push = offer.request_id is None and nonce is None
        pending = None
        with self._lock:
            if offer.request_id is not None:
                pending = self._pending.pop(offer.request_id, None)
            if pending is None and nonce is not None:
                # The request id was changed on the way; the (still unverified) envelope
                # names ours: let the checks refuse it now rather than time out.
                pending = self._pending.pop(nonce, None)
            if pending is None and not is_push:
                for waiting in self._pending.values():
                    if len(waiting.strays) < _MAX_STRAYS:
                        waiting.strays.append(offer)
        if pending is not None:
            _settle(pending.future, offer)
            return
        if offer.request_id is None and isinstance(offer, UpdateOffer):
            # A push (or passing for one: a replayed answer with its request id cut off,
            # which the nonce check will refuse).
            self._push(offer)
        elif offer.request_id is not None or nonce is not None:
            log.debug(
                "%s: offer for request %s is not ours now",
                self.config.device_id,
                offer.request_id or nonce,
            )

    def _push(self, offer: UpdateOffer) -> None:
        if self.on_push is not None:
            try:
                self.on_push(offer)
            except Exception:
                log.exception("%s: on_push hook failed", self.config.device_id)
            return
        with self._lock:
            self._pushes.append(offer)
            self._push_ready.notify_all()

    def next_push(self, timeout: float | None = None) -> UpdateOffer | None:
        """The oldest pushed offer not taken yet, waiting up to ``timeout`` seconds."""
        with self._lock:
            self._push_ready.wait_for(lambda: bool(self._pushes) or self._closed, timeout)
            return self._pushes.popleft() if self._pushes else None

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
        if self.on_status is not None:
            try:
                self.on_status(status)
            except Exception:
                log.exception("%s: on_status hook failed", self.config.device_id)
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
        so the answer cannot be missed. Offers for other request ids do not resolve it
        (see :meth:`strays`).
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

    def _resend(self, request_id: str) -> None:
        with self._lock:
            pending = self._pending.get(request_id)
            send_now = pending is not None and self._subscribed and request_id not in self._unsent
        if pending is not None and send_now:
            self._publish(self.announce_topic, pending.payload)

    def forget(self, request_id: str) -> tuple[Offer, ...]:
        """Stop waiting for the offer answering ``request_id``; returns the strays that
        arrived meanwhile (offers answering other requests)."""
        with self._lock:
            pending = self._pending.pop(request_id, None)
            if request_id in self._unsent:
                self._unsent.remove(request_id)
        return tuple(pending.strays) if pending is not None else ()

    def announce(self, request_id: str | None = None, timeout: float | None = None) -> Offer:
        """Announce and block until the answering offer arrives (any of the three kinds).

        Nothing is verified here: pass the offer to :meth:`handle`. Raises
        :class:`OfferTimeout` when none comes in time (with the strays that came
        instead) and :class:`~ota_core.errors.VerificationFailed` (``malformed-offer``)
        when the answer cannot be read.
        """
        wait = self.config.timeout if timeout is None else timeout
        rid, future = self.request_offer(request_id)
        try:
            try:
                return future.result(wait / 2)
            except FutureTimeout:
                # No answer yet: the announcement may have died with a bridge replica
                # that held it (a shared subscription does not hand it to another).
                # Send it once more, same request id: bridges answer duplicates alike.
                self._resend(rid)
                return future.result(wait / 2)
        except FutureTimeout as e:
            strays = self.forget(rid)
            raise OfferTimeout(
                f"no offer for request {rid} within {wait:g}s on {self.offer_topic}; "
                f"is the bridge running and connected to {self.config.broker_for_messages}?",
                strays,
            ) from e

    # ----------------------------------------------------------------- checks

    def checker(self) -> OfferChecker:
        """The checks for the state the device is in now."""
        return OfferChecker(
            verifier=self.verifier,
            device_id=self.config.device_id,
            installed_version=self.version,
            hardware=self.config.hardware,
            installed_counter=self.release_counter,
            offer_keys=self.keyring.keys if self.keyring is not None else None,
            accept_push=True,
            clock=self.clock,
        )

    def _checked(self, offer: Offer, check: Callable[[OfferChecker], _T]) -> _T:
        """Run ``check``; when the envelope names an offer key we do not know, refresh the
        keys from GET /keys once and check again (how a rotated key reaches devices)."""
        try:
            return check(self.checker())
        except VerificationFailed as e:
            keyring = self.keyring
            if e.reason != "envelope-signature" or keyring is None or not keyring.refreshable:
                raise
            key_id = claimed_key_id(offer.envelope)
            if key_id is None or key_id in keyring.keys:
                raise
            if keyring.refresh_for(key_id):
                log.info(
                    "%s: learned offer key %s from %s",
                    self.config.device_id,
                    key_id,
                    keyring.keys_url,
                )
                return check(self.checker())
            if keyring.last_error is not None:
                message = e.detail.removeprefix(f"{e.reason}: ")
                raise VerificationFailed(
                    e.reason, f"{message}; fetching {keyring.keys_url} failed: {keyring.last_error}"
                ) from e
            raise

    # ----------------------------------------------------------------- handling offers

    def handle(
        self, offer: Offer, request_id: str | None, *, quiet_expired: bool = False
    ) -> Outcome:
        """Verify ``offer`` (the answer to ``request_id``, or a push when None) and act on it:
        install an update, accept an up-to-date, report an error reply.

        A refused offer or reply is reported on the status topic as ``failed`` with
        ``"<reason>: <message>"``, except an expired one when ``quiet_expired`` (the
        caller is about to announce again for a fresh offer).
        """
        with self._install_lock:
            pushed = request_id is None
            if isinstance(offer, UpdateOffer):
                result = self.install(offer, request_id, quiet_expired=quiet_expired)
                if result.ok:
                    kind = OutcomeKind.INSTALLED
                elif result.reason == DownloadFailed.code:
                    kind = OutcomeKind.DOWNLOAD_FAILED
                elif result.reason == InstallFailed.code:
                    kind = OutcomeKind.INSTALL_FAILED
                else:
                    kind = OutcomeKind.REJECTED
                return self._outcome(
                    kind,
                    request_id,
                    offered_build_id=offer.build_id,
                    offered_version=offer.version,
                    reason=result.reason,
                    detail=result.detail,
                    path=result.path,
                    sha256=result.sha256,
                    pushed=pushed,
                )
            try:
                self._checked(offer, lambda c: c.check_envelope(offer, request_id))
            except VerificationFailed as e:
                if not (quiet_expired and e.reason == RETRY_REASON):
                    self._report_refusal(e, self.build_id, request_id or offer.request_id)
                return self._outcome(
                    OutcomeKind.REJECTED, request_id, reason=e.reason, detail=e.detail
                )
            if isinstance(offer, ErrorReply):
                return self._outcome(
                    OutcomeKind.ERROR_REPLY, request_id, reason=offer.error, detail=offer.detail
                )
            log.info("%s: up to date", self.config.device_id)
            return self._outcome(OutcomeKind.UP_TO_DATE, request_id)

    def refuse_stray(self, stray: Offer, request_id: str) -> Outcome:
        """Refuse an offer that came instead of the answer to ``request_id`` (a replay,
        another device's offer) with the first check it fails."""
        with self._install_lock:
            try:
                if isinstance(stray, UpdateOffer):
                    self._checked(stray, lambda c: c.check(stray, request_id))
                else:
                    self._checked(stray, lambda c: c.check_envelope(stray, request_id))
                # Unreachable in practice: a stray never answers request_id.
                error = VerificationFailed("wrong-request", "offer answers another request")
            except VerificationFailed as e:
                error = e
            offered = stray.build_id if isinstance(stray, UpdateOffer) else None
            self._report_refusal(error, offered or self.build_id, request_id)
            return self._outcome(
                OutcomeKind.REJECTED,
                request_id,
                offered_build_id=offered,
                offered_version=stray.version if isinstance(stray, UpdateOffer) else None,
                reason=error.reason,
                detail=error.detail,
            )

    def _report_refusal(
        self, error: VerificationFailed, build_id: str, request_id: str | None
    ) -> None:
        log.info("%s: refusing: %s", self.config.device_id, error.detail)
        self.report(DeviceState.FAILED, build_id, error.detail, request_id)

    def install_dir(self) -> Path:
        if self._install_dir is None:
            self._install_dir = Path(
                tempfile.mkdtemp(prefix=f"ota-device-{self.config.device_id}-")
            )
        self._install_dir.mkdir(parents=True, exist_ok=True)
        return self._install_dir

    def install(
        self,
        offer: UpdateOffer,
        expected_request_id: str | None = None,
        *,
        quiet_expired: bool = False,
    ) -> InstallResult:
        """Verify ``offer``, download, check and install its package, reporting each step.

        ``expected_request_id`` None means a pushed offer (its envelope nonce must be
        null). Never raises for a bad offer, package or download: the result names the
        reason and a ``failed`` status (detail ``"<reason>: <message>"``) has been reported.
        """
        with self._install_lock:
            try:
                manifest = self._checked(offer, lambda c: c.check(offer, expected_request_id))
            except VerificationFailed as e:
                report = not (quiet_expired and e.reason == RETRY_REASON)
                return self._failed(offer, e.reason, e.detail, expected_request_id, report)
            if not self.config.download:
                return self._install_without_download(offer, manifest, expected_request_id)
            return self._download_and_install(offer, manifest, expected_request_id)

    def _download_and_install(
        self, offer: UpdateOffer, manifest: ReleaseManifest, rid: str | None
    ) -> InstallResult:
        target = offer.build_id
        rid = rid if rid is not None else offer.request_id
        try:
            url = package_url(self.config.http_base_url, offer.url)
        except DownloadFailed as e:
            return self._failed(offer, e.code, f"{e.code}: {e.detail}", rid)
        store = self.config.store_packages
        tmp: Path | None = None
        final: Path | None = None
        try:
            if store:
                folder = self.install_dir()
                fd, tmp_name = tempfile.mkstemp(
                    prefix=f".{manifest.filename}.", suffix=".part", dir=folder
                )
                tmp = Path(tmp_name)
                final = folder / manifest.filename  # a validated plain file name
                out = os.fdopen(fd, "wb")
            else:
                out = None
        except OSError as e:
            return self._failed(offer, InstallFailed.code, f"install-failed: {e}", rid)
        try:
            try:
                self.report(DeviceState.DOWNLOADING, target, request_id=rid)
                digest = PackageDigest(manifest.size, manifest.sha256)
                self.http.download_to(url, digest, out, self.config.timeout)
                self.report(DeviceState.VERIFYING, target, request_id=rid)
                sha256 = digest.finish()
                self.report(DeviceState.INSTALLING, target, request_id=rid)
                if out is not None:
                    out.flush()
                    os.fsync(out.fileno())
            finally:
                if out is not None:
                    out.close()
            if self.installer is not None:
                self.installer(manifest, tmp)
            if tmp is not None and final is not None:
                os.replace(tmp, final)  # atomic: the old package or the new one
                tmp = None
                fsync_dir(final.parent)
            self._commit(manifest, sha256)
        except VerificationFailed as e:
            return self._failed(offer, e.reason, e.detail, rid)
        except DownloadFailed as e:
            return self._failed(offer, e.code, f"{e.code}: {e.detail}", rid)
        except InstallFailed as e:
            return self._failed(offer, e.code, f"{e.code}: {e.detail}", rid)
        except Exception as e:  # an installer hook's or the disk's failure
            return self._failed(offer, InstallFailed.code, f"install-failed: {e}", rid)
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        self.report(DeviceState.INSTALLED, target, request_id=rid)
        log.info(
            "%s: installed %s (%s)%s",
            self.config.device_id,
            target,
            manifest.version,
            f" at {final}" if final is not None else "",
        )
        return InstallResult(
            ok=True,
            build_id=manifest.build_id,
            version=manifest.version,
            path=final,
            sha256=sha256,
            size=manifest.size,
        )

    def _install_without_download(
        self, offer: UpdateOffer, manifest: ReleaseManifest, rid: str | None
    ) -> InstallResult:
        # Benchmark mode (download=False): the offer passed every check; the package is
        # taken as it was signed, without fetching it. Same status sequence as a real install.
        target = offer.build_id
        rid = rid if rid is not None else offer.request_id
        for state in (DeviceState.DOWNLOADING, DeviceState.VERIFYING, DeviceState.INSTALLING):
            self.report(state, target, request_id=rid)
        try:
            if self.installer is not None:
                self.installer(manifest, None)
            self._commit(manifest, manifest.sha256)
        except InstallFailed as e:
            return self._failed(offer, e.code, f"{e.code}: {e.detail}", rid)
        except Exception as e:
            return self._failed(offer, InstallFailed.code, f"install-failed: {e}", rid)
        self.report(DeviceState.INSTALLED, target, request_id=rid)
        return InstallResult(
            ok=True,
            build_id=manifest.build_id,
            version=manifest.version,
            sha256=manifest.sha256,
            size=manifest.size,
        )

    def _commit(self, manifest: ReleaseManifest, sha256: str) -> None:
        """The device now runs ``manifest``: remember it (state.json first, then memory)."""
        if self.config.persist_state and self.config.install_dir is not None:
            save_state(
                self.config.install_dir,
                InstalledState.now(
                    manifest.build_id, manifest.version, manifest.release_counter, sha256
                ),
            )
        self.build_id, self.version = manifest.build_id, manifest.version
        self.release_counter, self.sha256 = manifest.release_counter, sha256

    def _failed(
        self,
        offer: UpdateOffer,
        reason: str,
        detail: str,
        request_id: str | None,
        report: bool = True,
    ) -> InstallResult:
        # INFO: the caller gets the reason in the result; the CLI prints it once.
        log.info("%s: refusing %s: %s", self.config.device_id, offer.build_id, detail)
        if report:
            rid = request_id if request_id is not None else offer.request_id
            self.report(DeviceState.FAILED, offer.build_id, detail, rid)
        return InstallResult(
            ok=False, build_id=offer.build_id, version=offer.version, reason=reason, detail=detail
        )

    def already_installed(self, offer: UpdateOffer) -> bool:
        """True for an offer of exactly what runs now (a duplicate push): nothing to do."""
        return offer.build_id == self.build_id and (
            self.sha256 is None or offer.checksum == self.sha256
        )

    # ----------------------------------------------------------------- one round

    def run_once(self, request_id: str | None = None, timeout: float | None = None) -> Outcome:
        """Connect if needed, announce, act on the answer; report what happened.

        An expired offer makes the device announce once more with a fresh request id.
        """
        try:
            self.connect()
        except BrokerUnavailable as e:
            return self._outcome(OutcomeKind.CONNECT_FAILED, reason=e.code, detail=e.detail)
        outcome = self._round(request_id, timeout, quiet_expired=True)
        if outcome.kind is OutcomeKind.REJECTED and outcome.reason == RETRY_REASON:
            return self.retry_after(outcome, timeout)
        return outcome

    def retry_after(self, refused: Outcome, timeout: float | None = None) -> Outcome:
        """Announce once more with a fresh request id after ``refused`` (an expired offer)."""
        log.info(
            "%s: %s; announcing again for a fresh offer", self.config.device_id, refused.detail
        )
        return replace(self._round(None, timeout, quiet_expired=False), retried=refused.reason)

    def _round(self, request_id: str | None, timeout: float | None, quiet_expired: bool) -> Outcome:
        rid = request_id if request_id is not None else secrets.token_hex(8)
        try:
            offer = self.announce(rid, timeout)
        except OfferTimeout as e:
            if e.strays:
                return self.refuse_stray(e.strays[0], rid)
            return self._outcome(OutcomeKind.TIMEOUT, rid, reason=e.code, detail=e.detail)
        except VerificationFailed as e:  # malformed-offer
            self._report_refusal(e, self.build_id, rid)
            return self._outcome(OutcomeKind.REJECTED, rid, reason=e.reason, detail=e.detail)
        return self.handle(offer, rid, quiet_expired=quiet_expired)

    # ----------------------------------------------------------------- push mode

    def listen(
        self,
        *,
        max_installs: int | None = None,
        duration: float | None = None,
        announce: bool = True,
        stop: threading.Event | None = None,
        on_outcome: Callable[[Outcome], None] | None = None,
    ) -> ListenResult:
        """Stay connected and install pushed offers as they arrive, each through every check.

        Use ``persistent_session=True`` so offers pushed while the device was offline are
        delivered when it reconnects. ``announce`` first runs one :meth:`run_once` round
        (the bridge learns the device is there; an update waiting for it is installed).
        Stops after ``max_installs`` installs, after ``duration`` seconds, or when ``stop``
        is set. Raises :class:`BrokerUnavailable` when it cannot connect at all.
        """
        self.connect()
        deadline = None if duration is None else time.monotonic() + duration
        outcomes: list[Outcome] = []
        installs = 0

        def record(outcome: Outcome) -> None:
            nonlocal installs
            outcomes.append(outcome)
            installs += outcome.kind is OutcomeKind.INSTALLED
            if on_outcome is not None:
                on_outcome(outcome)

        if announce:
            record(self.run_once())
        while True:
            if max_installs is not None and installs >= max_installs:
                stopped: Literal["max-installs", "duration", "stopped"] = "max-installs"
                break
            if (stop is not None and stop.is_set()) or self._closed:
                stopped = "stopped"
                break
            left = 0.5 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                stopped = "duration"
                break
            offer = self.next_push(min(left, 0.5))
            if offer is None:
                continue
            outcome = self.handle_push(offer)
            if outcome is not None:
                record(outcome)
        return ListenResult(tuple(outcomes), installs, stopped)

    def handle_push(self, offer: UpdateOffer) -> Outcome | None:
        """Act on one pushed offer (None: a duplicate of what runs now, ignored); an
        expired one makes the device announce for a fresh offer."""
        with self._install_lock:
            if self.already_installed(offer):
                log.debug(
                    "%s: pushed %s is installed already", self.config.device_id, offer.build_id
                )
                return None
            outcome = self.handle(offer, None, quiet_expired=True)
            if outcome.kind is OutcomeKind.REJECTED and outcome.reason == RETRY_REASON:
                return self.retry_after(outcome)
            return outcome

    def _outcome(self, kind: OutcomeKind, request_id: str | None = None, **fields: Any) -> Outcome:
        return Outcome(
            kind=kind,
            device_id=self.config.device_id,
            build_id=self.build_id,
            version=self.version,
            request_id=request_id,
            **fields,
        )


def _claimed_nonce(envelope: str | None) -> str | None:
    # Routing only: which request an (unverified) envelope says it answers.
    if envelope is None:
        return None
    with contextlib.suppress(InvalidInput, AttributeError):
        value = load_json_object(envelope.encode("utf-8"), "envelope").get("nonce")
        return value if isinstance(value, str) else None
    return None


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
