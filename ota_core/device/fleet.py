"""A fleet of simulated devices in one process (issues 4 and 6): ``ota fleet``.

Each simulated device is a real :class:`~ota_core.device.DeviceClient` — its own
device id, build, version, hardware and channel, its own MQTT connection and
session, every offer through the full check chain, real downloads verified
against the signed size and SHA-256, real status reports — but the expensive
parts are shared:

* **network**: one :class:`~ota_core.device.netloop.MqttLoop` thread (epoll) drives
  all the MQTT connections (``loop_threads`` to spread them over more); not a thread
  per device. Measured on 2 cores against Mosquitto, responder in another process:

  ======================  ======  =========  ========  ===========  ==========================
  network                 N       threads    connect   idle CPU     announce→verify→installed
  ======================  ======  =========  ========  ===========  ==========================
  paho thread per device  200     200 + 2    0.19 s    0.7 %        0.36 s (0.34 s CPU)
  paho thread per device  1,000   fails: paho's ``select()`` cannot watch fd ≥ 1024 and each
                                  client holds 3 fds, so connections drop past ~340 clients
  shared loop (default)   200     1 + 9      0.11 s    0.1 %        0.21 s (0.17 s CPU)
  shared loop (default)   1,000   1 + 9      0.47 s    0.3 %        0.97 s (0.70 s CPU)
  ======================  ======  =========  ========  ===========  ==========================

  ("1 + 9": the network thread, 8 workers and a timer. The round is ``download=False``;
  with real 300 KB downloads 1,000 devices took 2.2 s over 8 HTTP connections.)
  ``loop_threads=0`` keeps the thread-per-device way for such comparisons;
* **work**: verification, downloads and installs run on a small worker pool
  (``workers``), never on the network thread;
* **HTTP**: one :class:`~ota_core.device.download.HttpPool` — at most
  ``http_connections`` connections to a host at once, kept alive and reused — so a
  thousand devices do not open a thousand connections to the package server;
* **keys**: one parsed release key and one offer keyring, fetched once.

Modes:

* ``announce``: every device announces once and acts on the answer (re-announcing
  once if the offer had expired); :meth:`Fleet.wait` returns when all are done.
* ``listen``: every device (optionally announces, then) stays connected with a
  persistent session and installs pushed offers as they arrive, until closed.

Options:

* failure injection: devices named in ``fail_devices`` or picked by
  ``fail_fraction`` (a deterministic hash of the device id, so the same ids fail
  every run) download and verify the package for real, report ``downloading``,
  ``verifying``, ``installing`` and then ``failed`` with ``install-failed: <reason>``
  instead of installing — a bad install, as a rollout's failure threshold sees it;
* ``download=False``: devices verify each offer (every check up to the version and
  counter) but skip the download and report the same states as a real install.
  **For benchmarks of the MQTT path only**: nothing is fetched, so the size and
  SHA-256 checks do not run;
* ``connection="shared"`` (*one_connection_many_ids*): one MQTT connection
  publishes for every device id and receives every offer through
  ``{prefix}/devices/+/offer``. For benchmarks only, and **only against a broker
  without per-device ACLs**: the production ``mosquitto.conf`` lets a client
  publish and subscribe under its own id only, so there this mode gets nothing.

Each device keeps an outcome record (:class:`DeviceRecord`): offers received with
timestamps, states reported, outcomes, and its final state.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import resource
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from ota_core.device.client import (
    RETRY_REASON,
    BrokerUnavailable,
    DeviceClient,
    DeviceConfig,
    InstallFailed,
    Outcome,
    OutcomeKind,
    parse_broker_url,
)
from ota_core.device.download import HttpPool
from ota_core.device.netloop import MqttLoop, SharedConnection
from ota_core.device.trust import OfferKeyring
from ota_core.errors import InvalidInput
from ota_core.keyfiles import load_verifier
from ota_core.models import Offer, ReleaseManifest, StatusReport, UpdateOffer
from ota_core.topics import TopicKind, TopicScheme

log = logging.getLogger(__name__)

Mode = Literal["announce", "listen"]
ConnectionMode = Literal["per-device", "shared"]


@dataclass(frozen=True, kw_only=True)
class SimDevice:
    """Who one simulated device is."""

    device_id: str
    build_id: str
    version: str
    hardware: str | None = None
    channel: str | None = None
    # Per-device MQTT credentials (a broker with per-device users and ACLs, as shipped);
    # None: the template's.
    mqtt_username: str | None = None
    mqtt_password: str | None = field(default=None, repr=False)


def make_devices(
    count: int,
    *,
    build_id: str,
    version: str,
    prefix: str = "sim",
    hardware: str | None = None,
    channel: str | None = None,
    start: int = 0,
    password_for: Callable[[str], str] | None = None,
) -> list[SimDevice]:
    """``count`` devices ``{prefix}-00000``… all running the same build. With
    ``password_for``, each logs in as its device id with ``password_for(device_id)``
    (the shipped broker's scheme: the username is the device id)."""
    devices = []
    for i in range(start, start + count):
        device_id = f"{prefix}-{i:05d}"
        devices.append(
            SimDevice(
                device_id=device_id,
                build_id=build_id,
                version=version,
                hardware=hardware,
                channel=channel,
                mqtt_username=device_id if password_for is not None else None,
                mqtt_password=password_for(device_id) if password_for is not None else None,
            )
        )
    return devices


@dataclass(frozen=True, kw_only=True)
class FleetConfig:
    """A fleet: who the devices are, and how they are simulated.

    ``template`` gives what every device shares (broker, HTTP, keys, topic prefix,
    protocol, timeout, session settings); its ``device_id``, ``build_id``, ``version``,
    ``hardware`` and ``channel`` are replaced by each :class:`SimDevice`'s. With
    ``template.install_dir`` set, each device stores its packages and ``state.json``
    in ``install_dir/<device_id>``; without it, downloads are verified and discarded.
    """

    devices: tuple[SimDevice, ...]
    template: DeviceConfig
    mode: Mode = "announce"
    #: listen mode: announce once after connecting (so the bridge knows the device).
    announce_first: bool = True
    connection: ConnectionMode = "per-device"
    download: bool = True
    fail_devices: frozenset[str] = frozenset()
    fail_fraction: float = 0.0
    fail_seed: str = "fleet"
    fail_reason: str = "injected failure (simulated bad install)"
    #: Network threads shared by all devices; 0: paho's own thread per device
    #: (``loop_start``), the costly way, kept to measure against.
    loop_threads: int = 1
    workers: int = 8
    http_connections: int = 8
    connect_parallelism: int = 16

    def __post_init__(self) -> None:
        ids = [d.device_id for d in self.devices]
        if len(set(ids)) != len(ids):
            raise InvalidInput("device ids in a fleet must be unique")
        if not 0.0 <= self.fail_fraction <= 1.0:
            raise InvalidInput("fail_fraction must be between 0 and 1")
        if min(self.workers, self.http_connections) < 1 or self.loop_threads < 0:
            raise InvalidInput(
                "workers and http_connections must be at least 1, loop_threads at least 0"
            )
        unknown = self.fail_devices - set(ids)
        if unknown:
            raise InvalidInput(f"fail_devices names devices not in the fleet: {sorted(unknown)}")

    def device_config(self, device: SimDevice) -> DeviceConfig:
        template = self.template
        install_dir = (
            template.install_dir / device.device_id if template.install_dir is not None else None
        )
        return replace(
            template,
            device_id=device.device_id,
            build_id=device.build_id,
            version=device.version,
            hardware=device.hardware,
            channel=device.channel,
            client_id=None,
            mqtt_username=device.mqtt_username or template.mqtt_username,
            mqtt_password=device.mqtt_password or template.mqtt_password,
            install_dir=install_dir,
            store_packages=install_dir is not None,
            persist_state=install_dir is not None,
            download=self.download,
            persistent_session=template.persistent_session or self.mode == "listen",
        )

    def fails(self, device_id: str) -> bool:
        """Whether failure injection picks ``device_id`` (deterministic)."""
        if device_id in self.fail_devices:
            return True
        if self.fail_fraction <= 0:
            return False
        digest = hashlib.sha256(f"{self.fail_seed}:{device_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.fail_fraction


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class OfferSeen:
    at: float  # time.time()
    status: str  # update-available | up-to-date | error
    build_id: str | None
    request_id: str | None


@dataclass(frozen=True)
class StatusSent:
    at: float
    state: str
    build_id: str
    detail: str | None


@dataclass
class DeviceRecord:
    """Everything one simulated device saw and did."""

    device_id: str
    injected_failure: bool
    offers: list[OfferSeen] = field(default_factory=list)
    statuses: list[StatusSent] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    connected_at: float | None = None
    connect_error: str | None = None

    @property
    def final(self) -> str | None:
        """The last outcome (``installed``, ``rejected``…), ``connect-failed``, or None while
        the device has not finished anything yet."""
        if self.outcomes:
            return self.outcomes[-1].kind.value
        if self.connect_error is not None:
            return OutcomeKind.CONNECT_FAILED.value
        return None

    @property
    def installs(self) -> int:
        return sum(o.kind is OutcomeKind.INSTALLED for o in self.outcomes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "final": self.final,
            "injected_failure": self.injected_failure,
            "connected_at": self.connected_at,
            "connect_error": self.connect_error,
            "offers": [vars(o) for o in self.offers],
            "statuses": [vars(s) for s in self.statuses],
            "outcomes": [o.to_dict() for o in self.outcomes],
        }


@dataclass(frozen=True)
class FleetStats:
    """What the simulator itself costs (this process)."""

    devices: int
    mqtt_connections: int
    threads: int
    cpu_seconds: float  # process CPU (user + system) since the fleet was made
    wall_seconds: float
    max_rss_mb: float
    http_connections_opened: int
    http_requests: int

    def to_dict(self) -> dict[str, Any]:
        return vars(self).copy()


# --------------------------------------------------------------------------- the fleet


@dataclass
class _Sim:
    device: DeviceClient
    record: DeviceRecord
    waiting: tuple[str, float, bool] | None = None  # (request id, deadline, retried)


class Fleet:
    """Run a :class:`FleetConfig`. Use as a context manager, or ``start()``/``close()``."""

    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self._t0 = time.monotonic()
        self._cpu0 = _cpu()
        template = config.template
        self.verifier = load_verifier(template.public_key_path)
        self.http = HttpPool(config.http_connections)
        self.keyring: OfferKeyring | None
        if template.insecure_unsealed:
            self.keyring = None
        elif template.offer_keys_path is not None:
            self.keyring = OfferKeyring.pinned(template.offer_keys_path)
        else:
            self.keyring = OfferKeyring.certified(
                self.verifier, template.resolved_keys_url, self.http, template.timeout
            )
        self.loops: list[MqttLoop] = []
        self.shared: SharedConnection | None = None
        if config.connection == "shared":
            address = parse_broker_url(template.broker_url)
            self.shared = SharedConnection(
                address.host,
                address.port,
                topic_filter=TopicScheme(template.topic_prefix).filter(TopicKind.OFFER),
                protocol="3.1.1" if template.protocol == "3.1.1" else "5",
                username=template.mqtt_username or address.username,
                password=template.mqtt_password or address.password,
                keepalive=template.keepalive,
            )
        else:
            self.loops = [MqttLoop(name=f"ota-fleet-mqtt-{i}") for i in range(config.loop_threads)]
        self._workers = ThreadPoolExecutor(config.workers, thread_name_prefix="ota-fleet-work")
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._sims: dict[str, _Sim] = {}
        for index, sim_device in enumerate(config.devices):
            self._sims[sim_device.device_id] = self._make(index, sim_device)
        self._closed = False
        self._timer = threading.Thread(target=self._watch_timeouts, daemon=True,
                                       name="ota-fleet-timer")  # fmt: skip
        self._timer.start()

    # ----------------------------------------------------------------- set-up

    def _make(self, index: int, sim_device: SimDevice) -> _Sim:
        config = self.config.device_config(sim_device)
        record = DeviceRecord(sim_device.device_id, self.config.fails(sim_device.device_id))
        installer = self._failing_installer if record.injected_failure else None
        device_id = sim_device.device_id
        device = DeviceClient(
            config,
            verifier=self.verifier,
            keyring=self.keyring,
            http=self.http,
            loop=self.loops[index % len(self.loops)] if self.loops else None,
            connection=self.shared,
            on_offer=lambda offer: self._offer_seen(record, offer),
            on_status=lambda status: self._status_sent(record, status),
            on_push=(lambda offer: self._pushed(device_id, offer))
            if self.config.mode == "listen"
            else None,
            installer=installer,
        )
        return _Sim(device, record)

    def _failing_installer(self, manifest: ReleaseManifest, path: Path | None) -> None:
        raise InstallFailed(self.config.fail_reason)

    @property
    def failing(self) -> frozenset[str]:
        """The device ids failure injection picked."""
        return frozenset(i for i, sim in self._sims.items() if sim.record.injected_failure)

    def devices(self) -> list[DeviceClient]:
        return [sim.device for sim in self._sims.values()]

    def start(self, timeout: float | None = None, announce: bool | None = None) -> None:
        """Fetch the offer keys once, connect every device (``connect_parallelism`` at a time)
        and announce each one (default: in announce mode, and in listen mode with
        ``announce_first``)."""
        if self.keyring is not None:
            self.keyring.ensure_loaded()
        wait = self.config.template.timeout if timeout is None else timeout
        with ThreadPoolExecutor(
            self.config.connect_parallelism, thread_name_prefix="ota-fleet-connect"
        ) as pool:
            list(pool.map(lambda sim: self._connect(sim, wait), self._sims.values()))
        if announce is None:
            announce = self.config.mode == "announce" or self.config.announce_first
        if announce:
            self.announce_all()

    def _connect(self, sim: _Sim, timeout: float) -> None:
        try:
            sim.device.connect(timeout)
            sim.record.connected_at = time.time()
        except BrokerUnavailable as e:
            sim.record.connect_error = e.detail
            with self._changed:
                self._changed.notify_all()

    def announce_all(self) -> None:
        """Every connected device announces once (without blocking on the answer)."""
        for sim in self._sims.values():
            if sim.device.connected:
                self._announce(sim, retried=False)

    # ----------------------------------------------------------------- announce / answer

    def _announce(self, sim: _Sim, retried: bool) -> None:
        device = sim.device
        rid = secrets.token_hex(8)
        # Waiting is set before the announcement goes out, so a fast answer finds it.
        with self._lock:
            sim.waiting = (rid, time.monotonic() + device.config.timeout, retried)
        _, future = device.request_offer(rid)
        future.add_done_callback(lambda f: self._answered(sim, rid, f, retried))

    def _answered(self, sim: _Sim, rid: str, future: Future[Offer], retried: bool) -> None:
        # Network thread: hand the work to the pool at once.
        with self._lock:
            if sim.waiting is None or sim.waiting[0] != rid:
                return  # timed out meanwhile
            sim.waiting = None
        if future.exception() is not None:
            self._submit(self._answer_failed, sim, rid, future)
        else:
            self._submit(self._handle_answer, sim, rid, future.result(), retried)

    def _handle_answer(self, sim: _Sim, rid: str, offer: Offer, retried: bool) -> None:
        outcome = sim.device.handle(offer, rid, quiet_expired=not retried)
        if not retried and outcome.kind is OutcomeKind.REJECTED and outcome.reason == RETRY_REASON:
            self._announce(sim, retried=True)
            return
        self._record(sim, replace(outcome, retried=RETRY_REASON) if retried else outcome)

    def _answer_failed(self, sim: _Sim, rid: str, future: Future[Offer]) -> None:
        error = future.exception()
        detail = getattr(error, "detail", str(error))
        reason = getattr(error, "reason", getattr(error, "code", "error"))
        kind = OutcomeKind.REJECTED if reason == "malformed-offer" else OutcomeKind.CONNECT_FAILED
        self._record(sim, sim.device._outcome(kind, rid, reason=reason, detail=detail))

    def _watch_timeouts(self) -> None:
        while not self._closed:
            time.sleep(0.2)
            now = time.monotonic()
            expired: list[tuple[_Sim, str, bool]] = []
            with self._lock:
                for sim in self._sims.values():
                    if sim.waiting is not None and sim.waiting[1] <= now:
                        expired.append((sim, sim.waiting[0], sim.waiting[2]))
                        sim.waiting = None
            for sim, rid, retried in expired:
                self._submit(self._timed_out, sim, rid, retried)

    def _timed_out(self, sim: _Sim, rid: str, retried: bool) -> None:
        strays = sim.device.forget(rid)
        if strays:
            outcome = sim.device.refuse_stray(strays[0], rid)
        else:
            outcome = sim.device._outcome(
                OutcomeKind.TIMEOUT,
                rid,
                reason="timeout",
                detail=f"no offer for request {rid} within {sim.device.config.timeout:g}s",
            )
        self._record(sim, replace(outcome, retried=RETRY_REASON) if retried else outcome)

    # ----------------------------------------------------------------- pushes

    def _pushed(self, device_id: str, offer: UpdateOffer) -> None:
        sim = self._sims.get(device_id)
        if sim is not None:
            self._submit(self._handle_push, sim, offer)

    def _handle_push(self, sim: _Sim, offer: UpdateOffer) -> None:
        outcome = sim.device.handle_push(offer)
        if outcome is not None:
            self._record(sim, outcome)

    # ----------------------------------------------------------------- records

    def _submit(self, fn: Callable[..., None], *args: Any) -> None:
        if self._closed:
            return

        def run() -> None:
            try:
                fn(*args)
            except Exception:  # one device's bug must not stall the fleet silently
                log.exception("fleet: %s failed", getattr(fn, "__name__", fn))

        with contextlib.suppress(RuntimeError):  # shut down meanwhile
            self._workers.submit(run)

    def _offer_seen(self, record: DeviceRecord, offer: Offer) -> None:
        build_id = offer.build_id if isinstance(offer, UpdateOffer) else None
        record.offers.append(OfferSeen(time.time(), offer.status, build_id, offer.request_id))

    def _status_sent(self, record: DeviceRecord, status: StatusReport) -> None:
        record.statuses.append(
            StatusSent(time.time(), status.state.value, status.build_id, status.detail)
        )

    def _record(self, sim: _Sim, outcome: Outcome) -> None:
        with self._changed:
            sim.record.outcomes.append(outcome)
            self._changed.notify_all()

    @property
    def records(self) -> dict[str, DeviceRecord]:
        return {device_id: sim.record for device_id, sim in self._sims.items()}

    def summary(self) -> dict[str, int]:
        """How many devices ended in each final state (``pending`` for none yet)."""
        return dict(Counter(sim.record.final or "pending" for sim in self._sims.values()))

    def wait(self, timeout: float) -> bool:
        """Until every device has a final state (announce mode); False on timeout."""
        return self.wait_for(
            lambda records: all(r.final is not None for r in records.values()), timeout
        )

    def wait_for(
        self, predicate: Callable[[dict[str, DeviceRecord]], bool], timeout: float
    ) -> bool:
        """Until ``predicate(records)`` holds (checked at each outcome); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self.records):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.5))
        return True

    def stats(self) -> FleetStats:
        if self.shared is not None:
            connections = 1 if self.shared.ready else 0
        else:
            connections = sum(sim.device.connected for sim in self._sims.values())
        return FleetStats(
            devices=len(self._sims),
            mqtt_connections=connections,
            threads=threading.active_count(),
            cpu_seconds=round(_cpu() - self._cpu0, 3),
            wall_seconds=round(time.monotonic() - self._t0, 3),
            max_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            http_connections_opened=self.http.connections_opened,
            http_requests=self.http.requests_sent,
        )

    # ----------------------------------------------------------------- tear-down

    def close(self) -> None:
        """Flush status reports, disconnect every device (persistent sessions stay on the
        broker), stop the threads."""
        if self._closed:
            return
        self._closed = True
        self._workers.shutdown(wait=True, cancel_futures=True)
        with ThreadPoolExecutor(
            self.config.connect_parallelism, thread_name_prefix="ota-fleet-close"
        ) as pool:
            list(pool.map(lambda sim: sim.device.close(), self._sims.values()))
        if self.shared is not None:
            self.shared.close()
        for loop in self.loops:
            loop.stop()
        self.http.close()
        self._timer.join(2)

    def __enter__(self) -> Fleet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _cpu() -> float:
    times = os.times()
    return times.user + times.system


def fleet_of(devices: Iterable[SimDevice], template: DeviceConfig, **options: Any) -> FleetConfig:
    """Shorthand: ``FleetConfig(devices=tuple(devices), template=template, **options)``."""
    return FleetConfig(devices=tuple(devices), template=template, **options)
