"""Wakes the relay when a commit is notified: LISTEN on the log's channel, on a dedicated asyncpg connection.

A LISTEN socket can die without anyone noticing for a long time, so the relay never relies on it alone: it
also polls (see pump.py). A dead connection is reopened on the next wait, and a reopened LISTEN wakes the
relay once, since whatever was notified while nobody listened is gone.

Every NOTIFY carries the head it committed (log/store.py, log/writer.py), so the relay reads the log only when
a head past what it sent was notified: the commits the log writer handed it already (relay/window.py) cost no
read. A wake that says nothing of the head (the LISTEN reopened, a payload that is no position) asks for a
read."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg
from sqlalchemy.exc import SQLAlchemyError

from auth_service.db.engine import asyncpg_dsn
from auth_service.log.store import NOTIFY_CHANNEL

log = logging.getLogger("tokenlife.relay")

_DB_ERRORS = (
    SQLAlchemyError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.TargetServerAttributeNotMatched,  # no server of the list takes writes yet (mid-failover)
    OSError,
    TimeoutError,
)


class Waker:
    """LISTEN on the log's NOTIFY channel on a dedicated connection; reopened on the next wait if it died."""

    def __init__(self, database_url: str, *, timeout: float) -> None:
        self._dsn = asyncpg_dsn(database_url)
        self._timeout = timeout
        self._event = asyncio.Event()
        self._conn: Any = None
        self._head = 0  # the highest head notified
        self._blind = True  # woken without a head to compare: read

    async def connect(self) -> None:
        """Open the LISTEN connection if it is not open; on failure the relay only polls until next time."""
        if self._conn is not None and not self._conn.is_closed():
            return
        self._conn = None
        try:
            conn = await asyncio.wait_for(asyncpg.connect(self._dsn), self._timeout)
        except _DB_ERRORS as exc:
            log.warning("relay: LISTEN connection failed, polling only for now: %r", exc)
            return
        await conn.add_listener(NOTIFY_CHANNEL, self._notified)
        self._conn = conn
        # Whatever was notified while nobody listened is lost: wake once so the caller reads again.
        self._blind = True
        self._event.set()

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            self._head = max(self._head, int(payload))
        except ValueError:
            self._blind = True
        self._event.set()

    def wake(self) -> None:
        """Wake the relay with nothing to read (the log writer's hand-off sent something to confirm)."""
        self._event.set()

    def behind(self, sent: int) -> bool:
        """Whether what was notified since the last `clear` asks for a read after `sent`."""
        return self._blind or self._head > sent

    def clear(self, *, reading: bool) -> None:
        """Forget past wakes, before each pass; `reading`: the pass reads the log (answers a blind wake)."""
        self._event.clear()
        if reading:
            self._blind = False

    async def wait(self, at_most: float) -> bool:
        """Return on a notification or a wake (True), or after `at_most` seconds (False)."""
        await self.connect()
        if self._event.is_set():
            return True
        try:
            async with asyncio.timeout(at_most):  # no task per wait, as wait_for would make
                await self._event.wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Close the LISTEN connection."""
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), self._timeout)
            except _DB_ERRORS:
                conn.terminate()
