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

The lock alone cannot tell a dead leader from a paused one (SIGSTOP, a stalled VM, a process starved of
CPU): a paused leader's session stays open and keeps the lock, and nobody publishes. So the leader also holds
a lease on the cursor's row: its backend pid and `lease_renewed_at`, renewed every `renew_interval` on the
lock's connection, judged on the database's clock (one clock for every instance). A standby that finds the
lock taken and the lease older than `lease_timeout` ends that backend's session (`pg_terminate_backend`,
which needs the same database role or pg_signal_backend) and takes the lock. A leader that resumes finds
its connection closed and stands down; what it may still publish is harmless (consumers drop positions they
hold). Only the backend that both holds the lock and is named by the lease is ended, so a leader that has
just taken the lock and not yet written its lease is never the one terminated.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg

from auth_service.db.engine import asyncpg_dsn

log = logging.getLogger("tokenlife.relay")

# Distinct from log.APPEND_LOCK_KEY; spells "tokrelay" so it is recognisable in pg_locks.
RELAY_LOCK_KEY = 0x746F6B72656C6179


_CLAIM_LEASE = (
    "UPDATE {table} SET leader_pid = pg_backend_pid(), lease_renewed_at = clock_timestamp() WHERE id = 1"
)
_RENEW_LEASE = (
    "UPDATE {table} SET lease_renewed_at = clock_timestamp() WHERE id = 1 AND leader_pid = pg_backend_pid()"
)
# The lease's pid, when its lease lapsed and that backend holds the relay lock in this very database
# (advisory locks are per database; a bigint key shows as classid = high half, objid = low half).
_LAPSED_LEADER = """
SELECT c.leader_pid FROM {table} c
WHERE c.id = 1
  AND c.lease_renewed_at < clock_timestamp() - make_interval(secs => $1)
  AND EXISTS (
    SELECT 1 FROM pg_locks l
    WHERE l.pid = c.leader_pid AND l.locktype = 'advisory' AND l.granted
      AND l.classid::bigint = $2 AND l.objid::bigint = $3 AND l.objsubid = 1
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  )
"""
_TERMINATE_WAIT_MS = 2000


class LeaderLock:
    """The relay's leader lock and cursor, on one dedicated connection.

    Another job that needs one leader among the instances (the SSF push deliverer) takes a lock of its own:
    its `lock_key` and a single-row `lease_table` shaped like relay_cursor's lease columns (id = 1,
    leader_pid, lease_renewed_at); the cursor methods are the relay's alone."""

    def __init__(
        self,
        database_url: str,
        *,
        check_interval: float = 0.25,
        check_timeout: float = 5.0,
        lease_timeout: float = 1.5,
        lock_key: int = RELAY_LOCK_KEY,
        lease_table: str = "relay_cursor",
    ) -> None:
        self._dsn = asyncpg_dsn(database_url)
        self._key = lock_key
        # A fixed identifier from our own code, never from input: formatted into the lease statements.
        self._claim, self._renew = (sql.format(table=lease_table) for sql in (_CLAIM_LEASE, _RENEW_LEASE))
        self._lapsed = _LAPSED_LEADER.format(table=lease_table)
        self._check_interval = check_interval  # also the lease's renewal period
        self._check_timeout = check_timeout
        self._lease_timeout = lease_timeout
        self.takeovers = 0  # sessions of lapsed leaders this instance ended
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
            got = await self._conn.fetchval("SELECT pg_try_advisory_lock($1)", self._key)
            if not got and await self._end_lapsed_leader():
                got = await self._conn.fetchval("SELECT pg_try_advisory_lock($1)", self._key)
            if got:
                await self._conn.execute(self._claim)
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
                # The renewal is the connection's check too: a session that stopped answering renews nothing.
                async with asyncio.timeout(self._check_timeout), self._use:
                    status = await self._conn.execute(self._renew)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("relay lock connection failed its check (%r): leadership lost", exc)
                self._lost.set()
                return
            if status != "UPDATE 1":
                log.warning("relay lease is no longer this session's: leadership lost")
                self._lost.set()
                return

    async def _end_lapsed_leader(self) -> bool:
        # Called with the lock taken by someone else: if its lease lapsed, end that session.
        pid = await self._conn.fetchval(
            self._lapsed, self._lease_timeout, self._key >> 32, self._key & 0xFFFFFFFF
        )
        if pid is None:
            return False
        log.warning(
            "relay leader (backend %d) has not renewed its lease in %.2f s: ending its session",
            pid,
            self._lease_timeout,
        )
        # The timeout makes the call wait until the backend is gone, so its lock is free when it returns.
        ended = await self._conn.fetchval("SELECT pg_terminate_backend($1, $2)", pid, _TERMINATE_WAIT_MS)
        if ended:
            self.takeovers += 1
        return bool(ended)

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
