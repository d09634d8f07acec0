"""Group commit: one writer per process appends every request's revocations, many requests per transaction.

Why: each append serialises on the log's lock (log.py), so one transaction per logout caps the whole service
at one lock hand-over plus several round trips per logout. The writer instead takes whatever requests queued
while its previous batch committed, and writes them all in one transaction on its own asyncpg connection:

    BEGIN; SET LOCAL lock_timeout; pg_advisory_xact_lock   one round trip (a simple-query batch)
    the head, and the state the decisions need             one prepared statement
    INSERT the events (unnest arrays), the projections
    set-wise (projections.REVOCATION_ROWS, SESSION_ENDS),
    pg_notify, now() (the events' recorded_at)              one prepared statement
    COMMIT                                                  one round trip

Right after COMMIT, before its requests are answered, it hands the events to its `on_commit` hooks: the
relay of the same process publishes them at once (relay/window.py), rather than after the NOTIFY and a read.

The lock protocol is log.py's: the lock is taken before the head is read, in a later statement, so positions
stay dense and equal to commit order; `log.appending()` (login, refresh, password change, key revocation)
takes the same lock, so the two kinds of appender interleave correctly.

Each request awaits the commit of the batch that holds its intents. The decisions that need the log's state
are made under the lock, in queue order (`intents.decide`), exactly as one transaction per request would
have made them. If the batch fails (lock timeout, lost connection, any database error) every request in it
gets an AppendError (503, Retry-After) and nothing of any of them is committed: the failures that reach this
point are the database's, not one request's (the events are validated contract objects before they are
queued), so retrying the others alone would mostly fail again, later.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg

from auth_service import contract as c
from auth_service.errors import AppendError
from auth_service.intents import EndSessions, Intent, LockedState, RevokeUser, decide
from auth_service.log import APPEND_LOCK_KEY, NOTIFY_CHANNEL
from auth_service.projections import EVENT_COLUMNS, REVOCATION_ROWS, session_ends

log = logging.getLogger("tokenlife.log")

MAX_BATCH = 500


_STATE = """
SELECT h.head, o.sids, o.users, o.created, w.marks
FROM (SELECT coalesce(max(position), 0) AS head FROM event_log) AS h,
     (SELECT array_agg(session_id ORDER BY session_id) AS sids,
             array_agg(user_id ORDER BY session_id) AS users,
             array_agg(created_at ORDER BY session_id) AS created
      FROM sessions
      WHERE (session_id = ANY($1::uuid[]) OR user_id = ANY($2::text[])) AND revoked_at IS NULL) AS o,
     (SELECT array_agg((SELECT max(r.not_before) FROM revocations r
                        WHERE (r.kind = 'user' AND r.subject = u) OR (r.kind = 'global' AND r.subject = $3))
                       ORDER BY n) AS marks
      FROM unnest($2::text[]) WITH ORDINALITY AS w(u, n)) AS w
"""

_BATCH_EVENTS = f"""(SELECT * FROM unnest($1::bigint[], $2::text[], $3::timestamptz[], $4::text[], $5::uuid[],
    $6::text[], $7::text[], $8::timestamptz[], $9::timestamptz[], $10::text[]) AS b({EVENT_COLUMNS}))"""

_OPEN_SESSIONS = (
    "(SELECT session_id, user_id, created_at, 0 AS start_position FROM sessions WHERE revoked_at IS NULL)"
)

_WRITE = f"""
WITH batch AS MATERIALIZED {_BATCH_EVENTS},
logged AS (
    INSERT INTO event_log (position, event_id, type, occurred_at, user_id, session_id, jti, expires_at,
                           schema_version, payload)
    SELECT * FROM unnest($1::bigint[], $11::uuid[], $2::text[], $3::timestamptz[], $4::text[], $5::uuid[],
                         $6::text[], $9::timestamptz[], $12::smallint[], $13::jsonb[])),
revoked AS (
    INSERT INTO revocations (kind, subject, not_before, expires_at, position)
    {REVOCATION_ROWS.format(events="batch")}
    ON CONFLICT (kind, subject) DO UPDATE SET
        not_before = greatest(revocations.not_before, excluded.not_before),
        expires_at = greatest(revocations.expires_at, excluded.expires_at),
        position = greatest(revocations.position, excluded.position)),
ended AS (
    UPDATE sessions SET revoked_at = x.revoked_at, revoked_reason = x.revoked_reason
    FROM ({session_ends(_OPEN_SESSIONS, "batch", None)}) AS x
    WHERE sessions.session_id = x.session_id)
SELECT now(), pg_notify('{NOTIFY_CHANNEL}', $14::text)
"""


def _columns(events: Sequence[c.Event]) -> list[Any]:
    cols: list[list[Any]] = [[] for _ in range(13)]
    for e in events:
        values = (
            e.position,
            e.type.value,
            e.occurred_at,
            getattr(e, "user_id", None),
            getattr(e, "session_id", None),
            getattr(e, "jti", None),
            getattr(e, "kid", None),
            getattr(e, "not_before", None),
            e.expires_at,
            getattr(e, "reason", None),
            e.event_id,
            e.schema_version,
            c.encode(e).decode(),
        )
        for col, value in zip(cols, values, strict=True):
            col.append(value)
    return cols


class _Request:
    __slots__ = ("intents", "done")

    def __init__(self, intents: Sequence[Intent], done: asyncio.Future[list[c.Event]]) -> None:
        self.intents = intents
        self.done = done


class LogWriter:
    """The process's one group committer: `submit()` queues intents and returns their committed events."""

    def __init__(self, dsn: str, *, lock_timeout_ms: int, access_token_ttl: int) -> None:
        self._dsn = dsn
        self._lock_timeout_ms = int(lock_timeout_ms)
        self._ttl = access_token_ttl
        self._queue: asyncio.Queue[_Request] = asyncio.Queue()
        self._conn: Any = None
        self._task: asyncio.Task[None] | None = None
        self.batches = 0  # committed batches, for the benchmark's events-per-batch figure
        # Told, right after each COMMIT and before the requests are answered, the events it appended and
        # their recorded_at: the relay of the same process publishes them at once (relay/window.py).
        self.on_commit: list[Callable[[list[c.Event], datetime], None]] = []

    @classmethod
    @asynccontextmanager
    async def running(
        cls, dsn: str, *, lock_timeout_ms: int, access_token_ttl: int
    ) -> AsyncIterator[LogWriter]:
        """A started writer, stopped (its connection closed) when the block ends."""
        writer = cls(dsn, lock_timeout_ms=lock_timeout_ms, access_token_ttl=access_token_ttl)
        writer.start()
        try:
            yield writer
        finally:
            await writer.stop()

    def start(self) -> None:
        """Start the writer's task (it connects on its first batch)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="tokenlife-log-writer")

    async def stop(self) -> None:
        """Stop the task, fail whatever is still queued, and close the connection."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        while not self._queue.empty():
            request = self._queue.get_nowait()
            if not request.done.done():
                request.done.set_exception(AppendError("the log writer stopped"))
        await self._close()

    async def submit(self, intents: Sequence[Intent]) -> list[c.Event]:
        """Append the events these intents call for, in one batch with others; returns them positioned."""
        if self._task is None:
            raise AppendError("the log writer is not running")
        done: asyncio.Future[list[c.Event]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Request(intents, done))
        return await done

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            live = [r for r in batch if not r.done.cancelled()]
            try:
                results, recorded = await self._commit([r.intents for r in live])
            except asyncio.CancelledError:
                for r in live:
                    if not r.done.done():
                        r.done.set_exception(AppendError("the log writer stopped"))
                raise
            except Exception as exc:
                error = exc if isinstance(exc, AppendError) else AppendError(f"append failed: {exc!r}")
                log.warning("log writer: a batch of %d requests failed: %s", len(live), error)
                for r in live:
                    if not r.done.done():
                        r.done.set_exception(error)
                continue
            self.batches += 1
            self._hand_off(results, recorded)
            for r, events in zip(live, results, strict=True):
                if not r.done.done():
                    r.done.set_result(events)

    def _hand_off(self, results: list[list[c.Event]], recorded: datetime | None) -> None:
        flat = [e for events in results for e in events]
        if not flat or recorded is None:
            return
        for hook in self.on_commit:
            try:
                hook(flat, recorded)
            except Exception:  # the commit stands whatever a hook does; the relay's read path still runs
                log.exception("log writer: an on_commit hook failed")

    async def _connection(self) -> Any:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(self._dsn)
        return self._conn

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), 2.0)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                conn.terminate()

    async def _commit(self, requests: list[Sequence[Intent]]) -> tuple[list[list[c.Event]], datetime | None]:
        conn = await self._connection()
        try:
            # One round trip: a simple-query batch runs as one implicit sequence; the lock is the last step.
            await conn.execute(
                "BEGIN ISOLATION LEVEL READ COMMITTED; "
                f"SET LOCAL lock_timeout = {self._lock_timeout_ms}; "
                f"SELECT pg_advisory_xact_lock({APPEND_LOCK_KEY})"
            )
            results, recorded = await self._write(conn, requests)
            await conn.execute("COMMIT")
            return results, recorded
        except BaseException as exc:
            await self._abandon(conn)
            if isinstance(exc, asyncpg.LockNotAvailableError):
                raise AppendError(
                    f"the log's append lock was not free within {self._lock_timeout_ms} ms"
                ) from exc
            raise

    async def _abandon(self, conn: Any) -> None:
        # Roll back; a connection that cannot even do that is dropped (reconnected for the next batch).
        try:
            if not conn.is_closed():
                await asyncio.wait_for(conn.execute("ROLLBACK"), 2.0)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncio.CancelledError):
            await self._close()

    async def _write(
        self, conn: Any, requests: list[Sequence[Intent]]
    ) -> tuple[list[list[c.Event]], datetime | None]:
        """The batch's events, positioned, and their recorded_at (the transaction's now()) if any."""
        sids = [
            s for intents in requests for i in intents if isinstance(i, EndSessions) for s in i.session_ids
        ]
        users = list(
            dict.fromkeys(i.user_id for intents in requests for i in intents if isinstance(i, RevokeUser))
        )
        head, open_sids, open_users, created, marks = await conn.fetchrow(
            _STATE, sids, users, c.GLOBAL_SUBJECT
        )
        state = LockedState(
            open_sessions={
                sid: (user, at)
                for sid, user, at in zip(open_sids or [], open_users or [], created or [], strict=True)
            },
            watermarks=dict(zip(users, marks or [], strict=True)),
        )
        decided = decide(requests, state, datetime.now(UTC), self._ttl)
        position = int(head)
        results: list[list[c.Event]] = []
        for events in decided:
            positioned: list[c.Event] = []
            for event in events:
                position += 1
                positioned.append(
                    event.model_copy(update={"position": position, "prev_position": position - 1})
                )
            results.append(positioned)
        flat = [e for events in results for e in events]
        if not flat:
            return results, None
        recorded: datetime = await conn.fetchval(_WRITE, *_columns(flat), str(position))
        return results, recorded
