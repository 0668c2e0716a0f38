"""The catalog revision: bumped with every release or rollout change, polled by bridges."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.engine import Connection

from ota_core.store.schema import catalog_state


def bump_revision(conn: Connection) -> None:
    """Mark the catalog (releases or rollouts) changed, in the caller's transaction."""
    conn.execute(
        update(catalog_state)
        .where(catalog_state.c.id == 1)
        .values(revision=catalog_state.c.revision + 1)
    )
