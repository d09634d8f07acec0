"""Wakes the relay when a commit is notified: LISTEN on the log's channel, on a dedicated asyncpg connection.

A LISTEN socket can die without anyone noticing for a long time, so the relay never relies on it alone: it
also polls (see relay.py). A dead connection is reopened on the next wait, and a reopened LISTEN wakes the
relay once, since whatever was notified while nobody listened is gone.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg
from sqlalchemy.exc import SQLAlchemyError

from auth_service.db import asyncpg_dsn
from auth_service.log import NOTIFY_CHANNEL

log = logging.getLogger("tokenlife.relay")

_DB_ERRORS = (SQLAlchemyError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


class Waker:
    """LISTEN on the log's NOTIFY channel on a dedicated connection; reopened on the next wait if it died."""

    def __init__(self, database_url: str, *, timeout: float) -> None:
        self._dsn = asyncpg_dsn(database_url)
        self._timeout = timeout
        self._event = asyncio.Event()
        self._conn: Any = None

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
        self._event.set()

    def _notified(self, *_args: object) -> None:
        self._event.set()

    def wake(self) -> None:
        """Wake the relay as a notification would (the log writer's hand-off sent something to confirm)."""
        self._event.set()

    def clear(self) -> None:
        """Forget past notifications (call before reading the log)."""
        self._event.clear()

    async def wait(self, at_most: float) -> None:
        """Return on a notification, or after `at_most` seconds."""
        await self.connect()
        try:
            await asyncio.wait_for(self._event.wait(), at_most)
        except TimeoutError:
            pass

    async def close(self) -> None:
        """Close the LISTEN connection."""
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), self._timeout)
            except _DB_ERRORS:
                conn.terminate()
