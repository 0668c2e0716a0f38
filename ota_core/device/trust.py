"""Which offer keys a device trusts, and how it learns rotated ones.

Two sources, chosen per device (see ``ota device --help``):

* **pinned** (``--offer-keys FILE``): the keys listed in a file, trusted as listed
  until each one's ``not_after``. The file is either the JSON of ``GET /keys``
  (``{"offer_keys": [...]}``) or the server's ``keys/offer-keys.json``
  (``{"keys": [...]}``). Nothing is ever fetched.
* **certified** (the default): ``GET {http}/keys`` at start, keeping only entries
  whose certificate verifies with the pinned release key (``public.pem``). The list
  travels over plain HTTP, so the certificate, not the transport, is what is trusted.
  When an envelope names a key id the device does not know, the list is fetched
  again once: that is how a rotated offer key reaches devices. A refresh replaces the
  whole list, so a key the server stopped publishing stops being trusted.

Refreshes are bounded: one fetch at a time (devices sharing a keyring wait for it
and use its result), the same unknown key id triggers at most one fetch per
``retry_seconds`` (60 s), and any unknown key id at most one per ``min_interval``
(10 s) after the previous refresh, so a flood of junk envelopes with made-up key
ids cannot turn into a flood of requests. (The price: a genuine rotation that lands
within 10 s of such a junk-triggered refresh is refused once, and picked up at the
device's next announcement.)
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ota_core.device.download import DownloadFailed, HttpPool
from ota_core.envelope import OfferKeyCertificate, TrustedOfferKeys, offer_key_id
from ota_core.errors import InvalidInput, KeyMaterialError
from ota_core.models import load_json_object
from ota_core.signing import ReleaseVerifier

log = logging.getLogger(__name__)

_KEY_ID_CHARS = frozenset("0123456789abcdef")
_REMEMBERED_UNKNOWN = 256  # unknown key ids remembered for the retry window


def keyring_entries(data: Mapping[str, Any], where: str) -> list[Mapping[str, Any]]:
    """The offer key entries of a ``GET /keys`` body or of ``keys/offer-keys.json``."""
    entries = data.get("offer_keys", data.get("keys"))
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise KeyMaterialError(
            f"{where} is neither GET /keys JSON (an 'offer_keys' list) nor an "
            "offer-keys.json (a 'keys' list)"
        )
    return entries


def pinned_keys(entries: Iterable[Mapping[str, Any]], where: str) -> TrustedOfferKeys:
    """Trust each entry as listed (no certificate check), until its ``not_after``."""
    keys: dict[str, tuple[Ed25519PublicKey, int]] = {}
    for index, entry in enumerate(entries):
        try:
            cert = OfferKeyCertificate.from_mapping(
                {k: entry.get(k) for k in ("key_id", "public_key", "not_after")},
                f"{where} entry {index}",
            )
            key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(cert.public_key))
        except (InvalidInput, ValueError) as e:
            raise KeyMaterialError(f"{where} entry {index}: {e}") from e
        if offer_key_id(key) != cert.key_id:
            # A typo or a swapped field: refuse the file rather than trust a key under
            # an id it does not have.
            raise KeyMaterialError(
                f"{where} entry {index}: key_id {cert.key_id} does not match its public key"
            )
        keys[cert.key_id] = (key, cert.not_after)
    return TrustedOfferKeys(keys)


def load_pinned_file(path: Path) -> TrustedOfferKeys:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise KeyMaterialError(f"cannot read the offer keyring {path}: {e.strerror}") from e
    try:
        data = load_json_object(raw, f"offer keyring {path}", 1024 * 1024)
    except InvalidInput as e:
        raise KeyMaterialError(e.detail) from e
    where = f"offer keyring {path}"
    keys = pinned_keys(keyring_entries(data, where), where)
    if not keys.keys:
        raise KeyMaterialError(f"{where} lists no offer keys")
    return keys


def claimed_key_id(envelope: str | None) -> str | None:
    """The key id an (unverified) envelope names, if it looks like one. Used only to decide
    whether to refresh the key list, never to trust anything."""
    if envelope is None:
        return None
    try:
        value = json.loads(envelope).get("key_id")
    except (ValueError, AttributeError, RecursionError):
        return None
    if isinstance(value, str) and len(value) == 16 and set(value) <= _KEY_ID_CHARS:
        return value
    return None


class OfferKeyring:
    """Thread-safe holder of the trusted offer keys; share one across a fleet of devices."""

    def __init__(
        self,
        keys: TrustedOfferKeys | None = None,
        *,
        release_verifier: ReleaseVerifier | None = None,
        keys_url: str | None = None,
        http: HttpPool | None = None,
        timeout: float = 10.0,
        retry_seconds: float = 60.0,
        min_interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if keys_url is not None and release_verifier is None:
            raise ValueError("fetching keys needs the release verifier to check certificates")
        self._keys = keys if keys is not None else TrustedOfferKeys()
        self._verifier = release_verifier
        self.keys_url = keys_url
        self._http = http
        self.timeout = timeout
        self.retry_seconds = retry_seconds
        self.min_interval = min_interval
        self._clock = clock
        self._last_refresh: float | None = None  # refreshes for unknown ids, not the first load
        self._fetch_lock = threading.Lock()
        self._loaded = keys_url is None
        self._tried: OrderedDict[str, float] = OrderedDict()
        #: Why the last fetch failed, for refusal messages; None after a good one.
        self.last_error: str | None = None
        self.fetches = 0

    @classmethod
    def pinned(cls, path: Path) -> OfferKeyring:
        return cls(load_pinned_file(path))

    @classmethod
    def certified(
        cls,
        release_verifier: ReleaseVerifier,
        keys_url: str,
        http: HttpPool | None = None,
        timeout: float = 10.0,
    ) -> OfferKeyring:
        return cls(release_verifier=release_verifier, keys_url=keys_url, http=http, timeout=timeout)

    @property
    def refreshable(self) -> bool:
        return self.keys_url is not None

    @property
    def keys(self) -> TrustedOfferKeys:
        return self._keys

    def key_ids(self) -> list[str]:
        return sorted(self._keys.keys)

    def ensure_loaded(self) -> None:
        """Fetch the list once (at start); a failure is logged and retried on demand."""
        if self._loaded:
            return
        with self._fetch_lock:
            if not self._loaded:
                self._fetch()

    def refresh_for(self, key_id: str) -> bool:
        """Make sure ``key_id`` is known, fetching the list again if allowed; True if it is."""
        if key_id in self._keys:
            return True
        if not self.refreshable:
            return False
        with self._fetch_lock:
            if key_id in self._keys:  # another device's fetch brought it meanwhile
                return True
            now = self._clock()
            last = self._tried.get(key_id)
            if last is not None and now - last < self.retry_seconds:
                return False
            if self._last_refresh is not None and now - self._last_refresh < self.min_interval:
                return False
            self._last_refresh = now
            self._tried[key_id] = now
            self._tried.move_to_end(key_id)
            while len(self._tried) > _REMEMBERED_UNKNOWN:
                self._tried.popitem(last=False)
            self._fetch()
            return key_id in self._keys

    def _fetch(self) -> None:
        assert self.keys_url is not None and self._verifier is not None
        http = self._http if self._http is not None else HttpPool(1)
        self.fetches += 1
        try:
            data = http.get_json(self.keys_url, self.timeout)
            entries = keyring_entries(data, f"GET {self.keys_url}")
        except (DownloadFailed, KeyMaterialError) as e:
            self.last_error = e.detail
            log.warning("cannot refresh the offer keys: %s", e.detail)
            return
        finally:
            self._loaded = True
            if self._http is None:
                http.close()
        keys = TrustedOfferKeys().with_certified(self._verifier, entries)
        skipped = len(entries) - len(keys.keys)
        if skipped:
            log.warning(
                "%s: %d offer key(s) without a valid release-key certificate were ignored",
                self.keys_url,
                skipped,
            )
        self._keys = keys
        self.last_error = None
        log.info("offer keys from %s: %s", self.keys_url, ", ".join(self.key_ids()) or "none")
