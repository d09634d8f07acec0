"""Wakes long-poll waiters when the log moves: ONE LISTEN connection per process, shared by every waiter.

A waiter holds no database connection while it waits: it takes `changed()` (an event set at the next
notification), reads the log, and waits on that event only if the read found nothing. Taking the event
*before* the read closes the race with a commit that lands between the read and the wait.

The LISTEN connection can die (a database restart, a network cut). It is reopened by itself with backoff;
while it is down, and once when it comes back, every waiter is woken so that it reads the log again: a
notification sent while nobody listened is lost, and a waiter must never sleep through a commit for longer
than the reconnect backoff. A wake-up is only a hint to read again; what the reader answers is what it read.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Iterator
from typing import Any

import asyncpg

from auth_service.db.engine import asyncpg_dsn
from auth_service.errors import TooManyWaiters
from auth_service.log.store import NOTIFY_CHANNEL

__all__ = ["LogListener"]

log = logging.getLogger("tokenlife.listener")

# TargetServerAttributeNotMatched: each server of a multi-host URL answered, none takes writes (mid-failover).
_DB_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.TargetServerAttributeNotMatched,
    OSError,
    TimeoutError,
)
_MAX_BACKOFF = 1.0


class LogListener:
    """LISTEN on the log's channel for the whole process; hands out a fresh event per change."""

    def __init__(self, database_url: str, *, max_waiters: int, timeout: float = 5.0) -> None:
        self._dsn = asyncpg_dsn(database_url)
        self._timeout = timeout
        self.max_waiters = max_waiters
        self.waiters = 0
        self.connected = False
        self.notifications = 0
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def changed(self) -> asyncio.Event:
        """An event set at the next change of the log (or when the listener cannot tell)."""
        return self._changed

    def _wake(self) -> None:
        # Every current waiter holds this event; the next ones get a new one.
        self._changed.set()
        self._changed = asyncio.Event()

    @contextlib.contextmanager
    def slot(self, retry_after: int) -> Iterator[None]:
        """Reserve one waiter slot for the block; TooManyWaiters when every slot is taken."""
        if self.waiters >= self.max_waiters:
            raise TooManyWaiters(
                f"this instance already holds {self.max_waiters} long-polls; retry, or poll without wait",
                retry_after,
            )
        self.waiters += 1
        try:
            yield
        finally:
            self.waiters -= 1

    async def start(self) -> None:
        """Start listening in the background (connecting, and reconnecting, by itself)."""
        self._task = asyncio.create_task(self._run(), name="tokenlife-log-listener")

    async def stop(self) -> None:
        """Stop listening and wake every waiter (their reads answer what is there)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self._wake()

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            lost = asyncio.Event()
            conn: Any = None
            try:
                conn = await asyncio.wait_for(asyncpg.connect(self._dsn), self._timeout)
                conn.add_termination_listener(functools.partial(_set, lost))
                await conn.add_listener(NOTIFY_CHANNEL, self._notified)
                self.connected = True
                backoff = 0.05
                self._wake()  # whatever was notified while nobody listened is lost: read again
                await self._watch(conn, lost)
            except asyncio.CancelledError:
                raise
            except _DB_ERRORS as exc:
                log.warning("LISTEN connection lost or refused (%s: %s); retrying", type(exc).__name__, exc)
            finally:
                self.connected = False
                if conn is not None:
                    conn.terminate()
            self._wake()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF)

    async def _watch(self, conn: Any, lost: asyncio.Event) -> None:
        # A half-open socket raises nothing: ask the server now and then, so a dead link is noticed.
        while not lost.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), self._timeout)
            if not lost.is_set():
                await asyncio.wait_for(conn.fetchval("SELECT 1"), self._timeout)

    def _notified(self, *_args: object) -> None:
        self.notifications += 1
        self._wake()


def _set(event: asyncio.Event, *_args: object) -> None:
    event.set()
