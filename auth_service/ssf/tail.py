"""The recent log as SETs, read once for every push stream: one reader follows the head (woken by the
process's LISTEN connection, log/listener.py, with a poll as the backstop) and keeps the last `capacity`
positions in memory, so that a commit costs one read however many receivers there are. A stream whose cursor
is behind the window reads the log itself (source.read_entries) until it catches up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import asyncpg

from auth_service.ssf.source import Entry, read_entries, read_head

log = logging.getLogger("tokenlife.ssf")

_DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


class LogTail:
    """The last positions of the log and their SETs, extended as the log grows."""

    def __init__(
        self,
        pool: Any,
        issuer: str,
        changed: Callable[[], asyncio.Event],
        *,
        capacity: int = 10_000,
        poll_interval: float = 1.0,
        batch: int = 500,
    ) -> None:
        self._pool = pool
        self._issuer = issuer
        self._changed = changed
        self._capacity = capacity
        self._poll_interval = poll_interval
        self._batch = batch
        self._entries: deque[Entry] = deque()
        self.last = 0  # the last position read
        self._grown = asyncio.Event()

    def grown(self) -> asyncio.Event:
        """An event set the next time the tail grows."""
        return self._grown

    def after(self, cursor: int, limit: int) -> list[Entry] | None:
        """Up to `limit` entries after `cursor`; None when the cursor is before the window (read the log)."""
        if cursor >= self.last:
            return []
        first = self._entries[0].position if self._entries else self.last + 1
        if cursor < first - 1:
            return None
        start = cursor - first + 1  # positions are gap-free: an index
        return [self._entries[i] for i in range(start, min(start + limit, len(self._entries)))]

    async def start_at_head(self) -> None:
        """Begin at the log's head: what commits from now on is read here."""
        async with self._pool.acquire() as conn:
            self.last = await read_head(conn)

    async def run(self) -> None:
        """Follow the log until cancelled; a failed read is retried after the poll interval."""
        while True:
            woken = self._changed()  # taken before the read: a commit after it sets this event
            try:
                grew = await self._read()
            except _DB_ERRORS as exc:
                log.warning("ssf: reading the log failed (%r); retrying", exc)
                grew = False
            if grew:
                continue  # maybe more: read again before waiting
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), self._poll_interval)

    async def _read(self) -> bool:
        async with self._pool.acquire() as conn:
            entries = await read_entries(conn, self._issuer, self.last, self._batch)
        if not entries:
            return False
        self._entries.extend(entries)
        while len(self._entries) > self._capacity:
            self._entries.popleft()
        self.last = entries[-1].position
        grown, self._grown = self._grown, asyncio.Event()
        grown.set()
        return len(entries) == self._batch
