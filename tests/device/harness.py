"""Test-side stand-ins for the bridge and the HTTP side, built from the real domain code.

* :class:`World`: a real signed catalog (real RSA key, real package bytes) and a real
  offer keyring (``keys/offer-keys.json`` made by :mod:`ota_core.keyfiles`), with the
  :class:`~ota_core.offers.OfferBuilder` that seals offers with its offer key.
* :class:`OfferResponder`: a paho client that answers every announcement with the
  offer the builder makes from the catalog, and records every status report. Tests
  swap ``answer`` to send tampered offers, decoys for other request ids, or nothing.
* :class:`PackageServer`: ``http.server.ThreadingHTTPServer`` on a free port serving
  byte strings by path (packages, and ``/keys`` in the shape of the real endpoint),
  optionally without ``Content-Length``.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from ota_core.catalog import Catalog, sign_release
from ota_core.device import DeviceClient
from ota_core.envelope import OfferSigner
from ota_core.keyfiles import ensure_offer_key, load_offer_signer, published_offer_keys
from ota_core.models import Announcement, Release, StatusReport, UpdateOffer
from ota_core.offers import OfferBuilder
from ota_core.signing import ReleaseSigner, generate_release_key, public_key_to_pem
from ota_core.topics import TopicKind, TopicScheme

Answer = Callable[[str, Announcement], list[bytes]]
#: make_device(connect=True, **DeviceConfig overrides) -> DeviceClient
DeviceFactory = Callable[..., DeviceClient]
ISSUED = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
#: The device tests' own topic prefix on the session's shared Mosquitto (see OfferResponder).
TOPIC_PREFIX = f"devtest-{uuid.uuid4().hex[:8]}/v1"


@dataclass(frozen=True)
class Package:
    release: Release
    body: bytes

    @property
    def path(self) -> str:
        return f"/packages/{self.release.filename}"


def make_package(
    signer: ReleaseSigner, build_id: str, version: str, counter: int, body: bytes, **extra: Any
) -> Package:
    release = sign_release(
        signer,
        build_id=build_id,
        version=version,
        filename=f"ota-{build_id}.zip",
        size=len(body),
        sha256=hashlib.sha256(body).hexdigest(),
        release_counter=counter,
        issued_at=ISSUED,
        **extra,
    )
    return Package(release, body)


def keys_body(keys_dir: Path, release_signer: ReleaseSigner) -> bytes:
    """What ``GET /keys`` answers for ``keys_dir`` (same shape as http_files/keys.py)."""
    return json.dumps(
        {
            "release_key": {
                "key_id": release_signer.key_id,
                "algorithm": "RSA-2048 PKCS#1 v1.5 SHA-256",
                "public_pem": public_key_to_pem(release_signer.private_key.public_key()).decode(),
            },
            "offer_keys": [
                {**entry, "algorithm": "Ed25519"} for entry in published_offer_keys(keys_dir)
            ],
        }
    ).encode()


@dataclass(frozen=True)
class World:
    """The release key the devices pin, the packages it signed, the catalog of them, and
    the offer key (in a real keyring under ``keys_dir``) that seals offers.

    ``build-2002`` is signed by another key and left out of the catalog: tests offer it.
    """

    public_key_path: Path
    signer: ReleaseSigner
    packages: dict[str, Package]  # by build id
    catalog: Catalog
    keys_dir: Path
    offer_signer: OfferSigner
    builder: OfferBuilder

    @classmethod
    def create(cls, signer: ReleaseSigner, folder: Path) -> World:
        public_key_path = folder / "public.pem"
        public_key_path.write_bytes(public_key_to_pem(signer.private_key.public_key()))
        packages = [
            make_package(signer, "build-1000", "1.0.0", 1, os.urandom(10_000)),
            make_package(signer, "build-1001", "1.1.0", 2, os.urandom(20_000)),
            # Larger than one download chunk, so streaming is exercised.
            make_package(signer, "build-1002", "1.2.0", 3, os.urandom(300_000)),
            make_package(signer, "build-1003-b", "1.3.0", 4, os.urandom(5_000), hardware="board-b"),
        ]
        other = ReleaseSigner(generate_release_key())
        forged = make_package(other, "build-2002", "1.2.0", 5, packages[2].body)
        keys_dir = folder / "keys"
        ensure_offer_key(keys_dir, signer)
        offer_signer = load_offer_signer(keys_dir)
        assert offer_signer is not None
        return cls(
            public_key_path=public_key_path,
            signer=signer,
            packages={p.release.build_id: p for p in [*packages, forged]},
            catalog=Catalog.of(p.release for p in packages),
            keys_dir=keys_dir,
            offer_signer=offer_signer,
            builder=OfferBuilder(offer_signer=offer_signer),
        )

    def release(self, build_id: str) -> Release:
        return self.packages[build_id].release

    def offer(
        self, build_id: str, device_id: str, request_id: str | None, **builder: Any
    ) -> UpdateOffer:
        """A genuine sealed offer of ``build_id`` (``builder`` overrides OfferBuilder fields)."""
        made = replace(self.builder, **builder) if builder else self.builder
        return made.update_offer(self.release(build_id), device_id, request_id)

    def keys_body(self) -> bytes:
        return keys_body(self.keys_dir, self.signer)


def tampered(offer: UpdateOffer, **changes: Any) -> bytes:
    """The offer's JSON with ``changes`` applied, as an attacker editing the wire would."""
    data = offer.to_dict()
    data.update(changes)
    return json.dumps(data).encode()


class OfferResponder:
    """Answers announcements on ``{prefix}/devices/+/announce`` and records status reports."""

    def __init__(
        self,
        url: str,
        catalog: Catalog,
        builder: OfferBuilder | None = None,
        prefix: str = "ota/v1",
        timeout: float = 10,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        parts = urlsplit(url)
        assert parts.hostname is not None
        self.catalog = catalog
        self.builder = builder or OfferBuilder()
        # Tests sharing the session's Mosquitto use their own prefix, so this responder
        # never answers another suite's devices (nor they ours).
        self.topics = TopicScheme(prefix)
        self.answer: Answer = self.policy_answer
        self.announcements: dict[str, list[Announcement]] = defaultdict(list)
        self.statuses: dict[str, list[StatusReport]] = defaultdict(list)
        self._cond = threading.Condition()
        self._subacks: set[int] = set()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"responder-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv311,  # amqtt speaks only 3.1.1
        )
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.connect(parts.hostname, parts.port or 1883, keepalive=30)
        self.client.loop_start()
        for kind in (TopicKind.ANNOUNCE, TopicKind.STATUS):
            _, mid = self.client.subscribe(self.topics.filter(kind), qos=1)
            with self._cond:
                if not self._cond.wait_for(partial(self._subacks.__contains__, mid), timeout):
                    raise TimeoutError(f"responder: no SUBACK from {url}")

    def policy_answer(self, device_id: str, announcement: Announcement) -> list[bytes]:
        """What the bridge would answer: the policy's offer for this announcement."""
        return [self.builder.for_announcement(self.catalog, device_id, announcement).to_bytes()]

    def publish_offer(self, device_id: str, payload: bytes, timeout: float = 10) -> None:
        info = self.client.publish(str(self.topics.offer(device_id)), payload, qos=1)
        info.wait_for_publish(timeout)

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, mid: int, *_rest: Any) -> None:
        with self._cond:
            self._subacks.add(mid)
            self._cond.notify_all()

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        topic = self.topics.parse(message.topic)
        if topic.kind == TopicKind.STATUS:
            status = StatusReport.from_bytes(bytes(message.payload))
            with self._cond:
                self.statuses[topic.device_id].append(status)
                self._cond.notify_all()
            return
        announcement = Announcement.from_bytes(bytes(message.payload))
        with self._cond:
            self.announcements[topic.device_id].append(announcement)
            self._cond.notify_all()
        # Publishing from the network thread is fine for paho (QoS 1, no waiting here).
        for payload in self.answer(topic.device_id, announcement):
            self.client.publish(str(self.topics.offer(topic.device_id)), payload, qos=1)

    def wait_statuses(self, device_id: str, timeout: float = 10) -> list[str]:
        """States reported by ``device_id`` once it reported a final one (installed/failed)."""
        with self._cond:
            done = self._cond.wait_for(
                lambda: any(s.state in ("installed", "failed") for s in self.statuses[device_id]),
                timeout,
            )
            states = [s.state.value for s in self.statuses[device_id]]
        if not done:
            raise TimeoutError(f"{device_id} reported no final status; got {states}")
        return states

    def wait_final_count(self, device_id: str, count: int, timeout: float = 10) -> list[str]:
        """States reported by ``device_id`` once it reported ``count`` final ones."""
        with self._cond:
            done = self._cond.wait_for(
                lambda: (
                    sum(s.state in ("installed", "failed") for s in self.statuses[device_id])
                    >= count
                ),
                timeout,
            )
            states = [s.state.value for s in self.statuses[device_id]]
        if not done:
            raise TimeoutError(f"{device_id} reported fewer than {count} final states: {states}")
        return states

    def last_status(self, device_id: str) -> StatusReport:
        self.wait_statuses(device_id)
        with self._cond:
            return self.statuses[device_id][-1]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Route:
    body: bytes
    content_length: bool = True
    status: int = 200
    location: str | None = None  # for redirects


@dataclass
class PackageServer:
    """Serves ``routes`` (path -> Route) over HTTP on 127.0.0.1 and a free port."""

    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            # Keep-alive, so the devices' shared connection pool is exercised.
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                server.requests.append(self.path)
                route = server.routes.get(self.path)
                if route is None:
                    self.send_error(404)
                    return
                self.send_response(route.status)
                if route.location is not None:
                    self.send_header("Location", route.location)
                self.send_header("Content-Type", "application/octet-stream")
                if route.content_length:
                    self.send_header("Content-Length", str(len(route.body)))
                else:
                    # HTTP/1.0 without a length: the body ends when the connection closes.
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(route.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def package_requests(self) -> list[str]:
        """Requests for anything but the key list."""
        return [path for path in self.requests if path != "/keys"]

    def add(self, path: str, body: bytes, content_length: bool = True) -> str:
        """Serve ``body`` at ``path``; returns the absolute URL."""
        self.routes[path] = Route(body, content_length)
        return self.url + path

    def redirect(self, path: str, location: str, status: int = 302) -> str:
        self.routes[path] = Route(b"", status=status, location=location)
        return self.url + path

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
