"""Leadership of the relay: one session-level advisory lock, held on a dedicated asyncpg connection.

Why a session lock on its own connection: the lock lives exactly as long as the database session. When
the leader's process dies, the kernel closes its socket, Postgres ends the session and frees the lock, and the
next standby's `pg_try_advisory_lock` succeeds; no lease to expire, no clock to trust. A pooled SQLAlchemy
connection would not do: the pool hands connections around and would carry the lock to whoever got it next.

The cursor is read and advanced on this same connection. That fences a deposed leader: once its session is
gone, its cursor UPDATE fails instead of racing the new leader's.

The leader notices a lost connection at once when the socket closes (asyncpg's termination listener), and
otherwise within `check_interval + check_timeout` (a `SELECT 1` probe), for the silent case of a connection
that stopped answering. Postgres itself only frees the lock of a silently cut client when its TCP keepalives
(tcp_keepalives_idle on the server) give up: until then nobody leads, which is safe (no two leaders), and the
resource services fall back to polling the log over HTTP.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg

from auth_service.db import asyncpg_dsn

log = logging.getLogger("tokenlife.relay")

# Distinct from log.APPEND_LOCK_KEY; spells "tokrelay" so it is recognisable in pg_locks.
RELAY_LOCK_KEY = 0x746F6B72656C6179


class LeaderLock:
    """The relay's leader lock and cursor, on one dedicated connection."""

    def __init__(self, database_url: str, *, check_interval: float = 1.0, check_timeout: float = 5.0) -> None:
        self._dsn = asyncpg_dsn(database_url)
        self._check_interval = check_interval
        self._check_timeout = check_timeout
        self._conn: Any = None
        self._held = False
        self._lost = asyncio.Event()
        # asyncpg refuses two operations at once on one connection: the probe and the cursor take turns.
        self._use = asyncio.Lock()

    @property
    def held(self) -> bool:
        """Whether this instance holds the lock (as far as it knows)."""
        return self._held and not self._lost.is_set()

    async def try_acquire(self) -> bool:
        """Try once to take the lock, connecting first if needed; True when this instance now leads."""
        if self.held:
            return True
        if self._conn is None or self._conn.is_closed():
            self._conn = None
            self._conn = await asyncio.wait_for(asyncpg.connect(self._dsn), self._check_timeout)
        async with self._use:
            got = await self._conn.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK_KEY)
        if got:
            self._lost = asyncio.Event()
            self._held = True
            lost = self._lost
            self._conn.add_termination_listener(lambda _conn: lost.set())
        return bool(got)

    async def wait_lost(self) -> None:
        """Return when the lock's connection is gone or stops answering: leadership is lost then."""
        while True:
            try:
                await asyncio.wait_for(self._lost.wait(), self._check_interval)
                return
            except TimeoutError:
                pass
            try:
                async with asyncio.timeout(self._check_timeout), self._use:
                    await self._conn.fetchval("SELECT 1")
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("relay lock connection failed its check (%r): leadership lost", exc)
                self._lost.set()
                return

    async def read_cursor(self) -> int:
        """The last position the broker confirmed."""
        async with asyncio.timeout(self._check_timeout), self._use:
            return int(await self._conn.fetchval("SELECT position FROM relay_cursor WHERE id = 1"))

    async def advance_cursor(self, position: int) -> None:
        """Move the cursor forward to a confirmed position; fails if this session no longer exists."""
        async with asyncio.timeout(self._check_timeout), self._use:
            await self._conn.execute(
                "UPDATE relay_cursor SET position = $1, updated_at = now() WHERE id = 1 AND position < $1",
                position,
            )

    async def release(self) -> None:
        """Give up the lock by closing its connection (the session's locks die with it)."""
        conn, self._conn = self._conn, None
        self._held = False
        self._lost.set()
        if conn is None or conn.is_closed():
            return
        try:
            await asyncio.wait_for(conn.close(), self._check_timeout)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            conn.terminate()
