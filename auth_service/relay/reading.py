"""The relay's reads of the log, on a connection of its own (never the request handlers' pool)."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Any

import asyncpg

from auth_service.log import store as event_log

# One cheap query per read: the payloads and their commit times (for the latency histogram) together.
_READ_BATCH = (
    "SELECT position, payload::text, recorded_at FROM event_log"
    " WHERE position > $1 ORDER BY position LIMIT $2"
)
_READ_HEAD = "SELECT coalesce(max(position), 0) FROM event_log"


class LogReader:
    """Reads batches and the head of the log; connects on first use and after `close()`, each call bounded
    by `timeout` seconds."""

    def __init__(self, dsn: str, timeout: float) -> None:
        self._dsn = dsn
        self._timeout = timeout
        self._conn: Any = None

    async def _connection(self) -> Any:
        if self._conn is None or self._conn.is_closed():
            self._conn = None
            self._conn = await asyncio.wait_for(asyncpg.connect(self._dsn), self._timeout)
        return self._conn

    async def batch(self, after: int, limit: int) -> list[tuple[int, dict[str, Any], datetime | None]]:
        """Up to `limit` events after `after`: (position, wire payload, recorded_at)."""
        async with asyncio.timeout(self._timeout):
            rows = await (await self._connection()).fetch(_READ_BATCH, after, limit)
        return [(r[0], event_log.with_positions(json.loads(r[1]), r[0]), r[2]) for r in rows]

    async def head(self) -> int:
        """The log's last position."""
        async with asyncio.timeout(self._timeout):
            return int(await (await self._connection()).fetchval(_READ_HEAD))

    async def close(self) -> None:
        """Drop the connection at once; the next read connects again."""
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()
