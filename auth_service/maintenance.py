"""Operator maintenance of the log's projections: rebuild and prune."""

from __future__ import annotations

from datetime import UTC, datetime

from auth_service.db.engine import create_engine
from auth_service.log import projections
from auth_service.log.store import appending
from auth_service.settings import AuthSettings


async def rebuild_projections(settings: AuthSettings) -> tuple[int, int]:
    """Rebuild sessions and revocations from the log, then prune; returns (events replayed, pruned)."""
    engine = create_engine(settings.database_url, pool_size=2)  # the rebuild reads on a second connection
    try:
        async with engine.begin() as conn:
            # Holding the append lock keeps appends out until the rebuilt projections commit.
            async with appending(conn, lock_timeout_ms=settings.lock_timeout_ms) as log_:
                replayed = await log_.rebuild_projections()
            pruned = await projections.prune(conn, datetime.now(UTC))
        return replayed, pruned
    finally:
        await engine.dispose()
