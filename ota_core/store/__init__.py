"""Database adapter (SQLAlchemy 2 Core, Alembic migrations).

SQLite by default (a file under ``OTA_DATA_DIR``); any SQLAlchemy URL works,
PostgreSQL included. Database errors are translated to
:class:`~ota_core.errors.OtaError` here, at the edge.
"""

from ota_core.store.database import Database, open_database
from ota_core.store.devices import DeviceRecord, DeviceRegistry
from ota_core.store.releases import ReleaseStore

__all__ = ["Database", "DeviceRecord", "DeviceRegistry", "ReleaseStore", "open_database"]
