"""The release catalog in the database."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from ota_core.catalog import Catalog
from ota_core.errors import Conflict, NotFound, ServiceUnavailable
from ota_core.models import Release
from ota_core.rollouts import Rollout
from ota_core.store.database import Database
from ota_core.store.revision import bump_revision
from ota_core.store.rollouts import RolloutSpec, insert_rollout, load_book
from ota_core.store.schema import catalog_state, releases

_FIELDS = tuple(c.name for c in releases.columns)


def _to_release(row: Any) -> Release:
    data = dict(row._mapping)
    created = data["created_at"]
    if created.tzinfo is None:  # SQLite hands back naive datetimes
        data["created_at"] = created.replace(tzinfo=UTC)
    return Release.model_validate(data, strict=False)


class ReleaseStore:
    def __init__(self, database: Database) -> None:
        self._engine = database.engine

    def revision(self) -> int:
        try:
            with self._engine.connect() as conn:
                value = conn.execute(
                    select(catalog_state.c.revision).where(catalog_state.c.id == 1)
                ).scalar_one()
        except SQLAlchemyError as e:
            raise ServiceUnavailable(f"database unavailable: {e}") from e
        return int(value)

    def load_catalog(self) -> Catalog:
        """A consistent snapshot: releases and the revision they belong to."""
        try:
            with self._engine.connect() as conn, conn.begin():
                revision = conn.execute(
                    select(catalog_state.c.revision).where(catalog_state.c.id == 1)
                ).scalar_one()
                rows = conn.execute(select(releases)).all()
                book = load_book(conn)
        except SQLAlchemyError as e:
            raise ServiceUnavailable(f"database unavailable: {e}") from e
        return Catalog.of((_to_release(r) for r in rows), int(revision), book)

    def get(self, build_id: str) -> Release:
        with self._engine.connect() as conn:
            row = conn.execute(select(releases).where(releases.c.build_id == build_id)).first()
        if row is None:
            raise NotFound(f"no release with build_id {build_id!r}")
        return _to_release(row)

    def add(self, release: Release, rollout: RolloutSpec | None = None) -> Rollout | None:
        """Insert ``release`` (and start ``rollout`` for it) in one transaction.

        A clash on build id, filename or counter is a 409. With a rollout, the
        release is never visible without it, so no device outside the first
        stage is offered it in between.
        """
        values = release.model_dump()
        started: Rollout | None = None
        try:
            with self._engine.begin() as conn:
                conn.execute(insert(releases).values(**{k: values[k] for k in _FIELDS}))
                if rollout is not None:
                    spec = replace(rollout, build_id=release.build_id)
                    started = insert_rollout(conn, spec, time.time())
                bump_revision(conn)
        except IntegrityError as e:
            raise Conflict(
                "a release with this build_id, filename or release_counter already exists"
            ) from e
        except SQLAlchemyError as e:
            raise ServiceUnavailable(f"database unavailable: {e}") from e
        return started

    def delete(self, build_id: str) -> Release:
        try:
            with self._engine.begin() as conn:
                row = conn.execute(select(releases).where(releases.c.build_id == build_id)).first()
                if row is None:
                    raise NotFound(f"no release with build_id {build_id!r}")
                conn.execute(delete(releases).where(releases.c.build_id == build_id))
                bump_revision(conn)
        except SQLAlchemyError as e:
            raise ServiceUnavailable(f"database unavailable: {e}") from e
        return _to_release(row)
