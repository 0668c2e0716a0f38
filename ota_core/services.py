"""Wiring: builds the adapters every service needs from one :class:`Settings`.

This is the composition root shared by ``ota run``, ``ota bridge`` and ``ota
http``. It opens the database (migrating it), loads the release key, and offers
a :class:`CatalogCache` that refreshes its snapshot when the catalog revision in
the database changes — that revision is how the admin side and the bridge
coordinate when they run as separate processes.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ota_core.catalog import Catalog
from ota_core.keyfiles import (
    OFFER_KEYRING_NAME,
    PUBLIC_KEY_NAME,
    load_offer_signer,
    load_signer,
    write_private_file,
)
from ota_core.offers import OfferBuilder
from ota_core.package_files import PackageFolder
from ota_core.releases import ReleaseService
from ota_core.settings import Settings
from ota_core.store import Database, DeviceRegistry, ReleaseStore, open_database


class CatalogCache:
    """Thread-safe catalog snapshot, reloaded only when the database revision moves."""

    def __init__(self, store: ReleaseStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._catalog = store.load_catalog()
        # When the revision was last read: monotonic (for ages) and wall clock (for mtimes).
        self._checked_at = time.monotonic()
        self._checked_wall = time.time()

    @property
    def current(self) -> Catalog:
        return self._catalog

    def refresh(self) -> Catalog:
        """Reload if stale; cheap when nothing changed (one tiny SELECT)."""
        started, started_wall = time.monotonic(), time.time()
        revision = self._store.revision()
        if revision != self._catalog.revision:
            with self._lock:
                if revision != self._catalog.revision:
                    self._catalog = self._store.load_catalog()
        if started > self._checked_at:
            self._checked_at, self._checked_wall = started, started_wall
        return self._catalog

    def checked_within(self, seconds: float) -> tuple[Catalog, float] | None:
        """The snapshot and the wall-clock time of its last database check, if that
        check was less than ``seconds`` ago; None means: call :meth:`refresh`.

        For hot paths that can trust a snapshot that old under conditions of their
        own (package downloads: see ``http_files.packages``).
        """
        checked_at, checked_wall, catalog = self._checked_at, self._checked_wall, self._catalog
        if time.monotonic() - checked_at < seconds:
            return catalog, checked_wall
        return None


@dataclass
class Services:
    settings: Settings
    database: Database
    releases: ReleaseService
    registry: DeviceRegistry
    packages: PackageFolder
    offers: OfferBuilder
    catalog: CatalogCache = field(repr=False)
    _keyring_stamp: int = field(default=0, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Services:
        database = open_database(settings.resolved_database_url)
        store = ReleaseStore(database)
        packages = PackageFolder(settings.packages_dir)
        packages.sweep_stale_uploads()
        releases = ReleaseService(store, packages, load_signer(settings.keys_dir))
        return cls(
            settings=settings,
            database=database,
            releases=releases,
            registry=DeviceRegistry(database),
            packages=packages,
            offers=OfferBuilder(
                settings.package_base_url,
                load_offer_signer(settings.keys_dir),
                settings.offer_ttl_seconds,
            ),
            catalog=CatalogCache(store),
        )

    def refresh_offer_key(self) -> bool:
        """Pick up a rotated offer key (``ota keys rotate`` in another process).

        Cheap: one ``stat`` of the keyring unless it changed. Returns True on a switch.
        """
        path = self.settings.keys_dir / OFFER_KEYRING_NAME
        try:
            stamp = path.stat().st_mtime_ns
        except OSError:
            return False
        if stamp == self._keyring_stamp:
            return False
        self._keyring_stamp = stamp
        signer = load_offer_signer(self.settings.keys_dir)
        current = self.offers.offer_signer
        if signer is None or (current is not None and current.key_id == signer.key_id):
            return False
        self.offers = self.offers.with_signer(signer)
        return True

    @property
    def public_key_path(self) -> Path:
        return self.settings.keys_dir / PUBLIC_KEY_NAME

    def close(self) -> None:
        self.database.dispose()


def resolve_admin_password(settings: Settings) -> tuple[str, bool]:
    """The admin password: ``OTA_ADMIN_PASSWORD``, else the stored one, else a new one.

    Returns (password, newly_generated). A generated password is kept in
    ``<data_dir>/admin-password`` with mode 0600 so restarts keep it.
    """
    if settings.admin_password is not None:
        return settings.admin_password.get_secret_value(), False
    path = settings.admin_password_file
    if path.exists():
        stored = path.read_text().strip()
        if stored:
            return stored, False
    password = secrets.token_urlsafe(18)
    write_private_file(path, (password + "\n").encode())
    return password, True
