"""Push delivery (RFC 8935) of one stream: its SETs POSTed to the receiver's endpoint in log order, each
retried with exponential backoff until the receiver takes it, at least once.

The receiver takes a SET with 202 (or any 2xx). A 400 is its refusal of that SET (RFC 8935 §2.3: invalid
key, issuer, audience...): sending it again cannot help, so it is logged, counted and passed. Anything else
(a refused connection, a timeout, a 5xx, 401/403/429) is retried after a wait that doubles up to
`max_backoff`, the same SET again, so nothing is lost and nothing is reordered. The cursor in PostgreSQL
moves after each batch and before each wait, so a new leader resumes after the last SET taken (it may send
again what was taken since: receivers deduplicate by jti, which is the same on every sending).

Each stream runs in a task of its own (deliverer.py) with one keep-alive connection of its own (http1.py):
a dead or slow receiver holds up only its own stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from auth_service.ssf import streams
from auth_service.ssf.events import StreamView, for_stream, set_jti
from auth_service.ssf.http1 import Connection, PushFailed
from auth_service.ssf.sets import set_claims, sign_set
from auth_service.ssf.source import Entry, read_entries
from auth_service.ssf.tail import LogTail
from auth_service.ssf.updates import Announce, apply, stopping
from auth_service.tokens.keyring import SigningKey

log = logging.getLogger("tokenlife.ssf")

MIN_BACKOFF = 0.05
BATCH = 500
HEADERS = {"Content-Type": "application/secevent+jwt", "Accept": "application/json"}


class StreamStopped(Exception):
    """The stream delivered the stream-updated SET that pauses or disables it (updates.py): its task ends."""


class Pusher:
    """Delivers one push stream from its cursor on, until cancelled."""

    def __init__(
        self,
        stream: streams.PushStream,
        pool: Any,
        tail: LogTail,
        issuer: str,
        key: Callable[[], SigningKey | None],
        announce: Announce,
        *,
        timeout: float,
        max_backoff: float,
        retention: float,
    ) -> None:
        self.stream = stream
        self._pool = pool
        self._tail = tail
        self._http = Connection(stream.endpoint_url, timeout=timeout)
        self._issuer = issuer
        self._key = key
        self._announce = announce
        self._max_backoff = max_backoff
        self._retention = retention
        self.delivered = 0
        self.refused = 0
        self.retries = 0

    async def run(self) -> None:
        """Deliver from the stream's cursor; a database failure is retried, never ends the stream's task."""
        try:
            while True:
                try:
                    await self._deliver_from_cursor()
                except StreamStopped:
                    return
                except asyncio.CancelledError:
                    raise
                except (OSError, TimeoutError, ConnectionError) as exc:
                    log.warning("ssf: stream %s: %r; resuming from its cursor", self.stream.stream_id, exc)
                except Exception as exc:  # asyncpg's errors among them: the stream goes on after a pause
                    log.warning("ssf: stream %s: %r; resuming from its cursor", self.stream.stream_id, exc)
                await asyncio.sleep(self._max_backoff / 4)
        finally:
            self._http.close()

    async def _deliver_from_cursor(self) -> None:
        async with self._pool.acquire() as conn:
            row = await streams.get(conn, self.stream.client_id, self.stream.stream_id)
            view = await streams.view(conn, row)
        cursor = int(row["cursor"])
        while True:
            grown = self._tail.grown()
            entries = self._tail.after(cursor, BATCH)
            if entries is None:  # behind the tail's window: read the log itself
                async with self._pool.acquire() as conn:
                    entries = await read_entries(conn, self._issuer, cursor, BATCH)
                    floor = datetime.now(UTC) - timedelta(seconds=self._retention)
                    if entries and entries[0].recorded_at < floor:
                        cursor = await streams.drop_past_retention(
                            conn, self.stream.stream_id, cursor, self._retention, self._announce
                        )
                        continue
            if not entries:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(grown.wait(), 1.0)
                continue
            cursor = await self._deliver(entries, view, cursor)

    async def _deliver(self, entries: list[Entry], view: StreamView, cursor: int) -> int:
        done = cursor
        try:
            for entry in entries:
                stop = None
                for index, body in for_stream(entry.bodies, view):
                    jti = set_jti(self.stream.stream_id, entry.position, index)
                    await self._send(jti, body, done)
                    stop = stopping(body) or stop
                done = entry.position
                if stop is not None:  # sent before the stream stops (SSF 1.0 §8.1.5)
                    async with self._pool.acquire() as conn, conn.transaction():  # both or neither
                        await streams.advance(conn, self.stream.stream_id, done)
                        stopped = await apply(conn, self.stream.stream_id, done, *stop)
                    if stopped:  # else a later change replaced it: the stream goes on
                        raise StreamStopped
        finally:
            if done > cursor:
                async with self._pool.acquire() as conn:
                    await streams.advance(conn, self.stream.stream_id, done)
        return done

    async def _send(self, jti: str, body: Any, done: int) -> None:
        """POST one SET until the receiver takes or refuses it."""
        backoff = MIN_BACKOFF
        saved = False
        while True:
            key = self._key()
            if key is not None:
                token = sign_set(key, set_claims(self._issuer, self.stream.client_id, jti, body))
                outcome = await self._post(token)
                if outcome == "taken":
                    self.delivered += 1
                    return
                if outcome == "refused":
                    self.refused += 1
                    return
            self.retries += 1
            if not saved:
                # Save the progress before waiting on a receiver that may stay away for long.
                async with self._pool.acquire() as conn:
                    await streams.advance(conn, self.stream.stream_id, done)
                saved = True
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff)

    async def _post(self, token: str) -> str:
        headers = dict(HEADERS)
        if self.stream.authorization_header:
            headers["Authorization"] = self.stream.authorization_header
        started = time.monotonic()
        try:
            answer = await self._http.post(token.encode(), headers)
        except PushFailed as exc:
            log.info("ssf: stream %s: push failed (%s)", self.stream.stream_id, exc)
            return "retry"
        if 200 <= answer.status < 300:
            return "taken"
        if answer.status == 400:
            log.warning(
                "ssf: stream %s: the receiver refused a SET: %s",
                self.stream.stream_id,
                answer.body[:200].decode(errors="replace").replace("\n", " "),
            )
            return "refused"
        log.info(
            "ssf: stream %s: push answered %d after %.3f s",
            self.stream.stream_id,
            answer.status,
            time.monotonic() - started,
        )
        return "retry"
