"""One batch of the log writer (writer.py), committed on the writer's own asyncpg connection.

A batch of logouts, RFC 7009 revocations and ended sessions (no watermark in it) costs one round trip: the
committer decides on the guess that every session it ends is still open (the request checked it moments
ago) and that no caller's token is revoked (a logout hands its token's check to the writer:
`submit(caller=)`), and calls the append function, a PL/pgSQL function made in pg_temp on its connection.
Run with no transaction around it, that one statement is a transaction of its own: it takes the lock,
checks the guess, reads the head, writes the events and the projections set-wise, NOTIFYs and commits. If
the guess failed (a session ended or a caller was revoked meanwhile) it writes nothing, and the committer
decides again on the locked path, which any batch with a watermark (logout everywhere, revoking a user)
takes at once, since a watermark depends on the one before:

    BEGIN; SET LOCAL lock_timeout; pg_advisory_xact_lock   one round trip (a simple-query batch)
    the callers' revocations (REVOKED_CALLERS), if any     one prepared statement
    the head, and the state the decisions need             one prepared statement
    INSERT the events (unnest arrays), the projections
    set-wise (projections.REVOCATION_ROWS, session_ends),
    the events' recorded_at (clock_timestamp())            one prepared statement
    pg_notify; COMMIT                                       one round trip

Both paths run the same write (batch_sql.py holds the statements), so the projections cannot differ.

The lock protocol is store.py's: the lock is taken before the head is read, in a later statement, so positions
stay dense and equal to commit order; `log.appending()` (login, refresh, password change, key revocation)
takes the same lock, so the two kinds of appender interleave correctly.

The decisions that need the log's state are made under the lock, in queue order (`intents.decide`), exactly
as one transaction per request would have made them.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import asyncpg

from auth_service import contract as c
from auth_service.errors import AppendError, InvalidToken
from auth_service.log import batch_sql as sql
from auth_service.log.intents import Caller, EndSessions, Intent, LockedState, RevokeUser, decide
from auth_service.log.store import APPEND_LOCK_KEY, NOTIFY_CHANNEL, positioned

log = logging.getLogger("tokenlife.log")


class Submitted(Protocol):
    """What the committer needs of a queued request: its intents, and its caller's token if it brought one."""

    @property
    def intents(self) -> Sequence[Intent]: ...

    @property
    def caller(self) -> Caller | None: ...


def _callers(requests: Sequence[Submitted]) -> list[list[Any]]:
    return sql.caller_columns([r.caller for r in requests if r.caller is not None])


def _sessions_to_end(requests: Sequence[Sequence[Intent]]) -> list[uuid.UUID]:
    return [s for intents in requests for i in intents if isinstance(i, EndSessions) for s in i.session_ids]


# A batch without watermarks decides on which sessions are open, never on their user or creation time.
_UNUSED = datetime.min.replace(tzinfo=UTC)


def _positioned(decided: list[list[c.Event]], base: int) -> list[list[c.Event]]:
    """Each request's events with positions from base + 1 on, in queue order, as the write numbers them."""
    results: list[list[c.Event]] = []
    for events in decided:
        results.append(positioned(events, base))
        base += len(events)
    return results


# What a request gets: its events, or the refusal of its caller's token.
Outcome = list[c.Event] | InvalidToken


class BatchCommitter:
    """The log writer's connection, and the two ways it commits a batch (see the module's docstring)."""

    def __init__(self, dsn: str, *, lock_timeout_ms: int, access_token_ttl: int) -> None:
        self._dsn = dsn
        self._lock_timeout_ms = int(lock_timeout_ms)
        self._ttl = access_token_ttl
        self._conn: Any = None
        self.one_trip = True  # False once the append function could not be made on a connection
        # Batches the append function refused (a session ended or a caller revoked meanwhile), decided again
        # under the lock.
        self.guesses_missed = 0

    async def commit(self, requests: Sequence[Submitted]) -> tuple[list[Outcome], datetime | None]:
        """Each request's events, positioned, or the refusal of its revoked caller, and their recorded_at
        (None when nothing was appended); raises (AppendError, a database error) with nothing committed."""
        conn = await self._connection()
        if self.one_trip and not any(isinstance(i, RevokeUser) for r in requests for i in r.intents):
            done = await self._append_at_once(conn, requests)
            if done is not None:
                return done
            self.guesses_missed += 1
        return await self._locked_commit(conn, requests)

    async def close(self) -> None:
        """Close the connection (the next batch would open one again)."""
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), 2.0)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                conn.terminate()

    async def _connection(self) -> Any:
        if self._conn is None or self._conn.is_closed():
            conn = await asyncpg.connect(self._dsn)
            try:
                await conn.execute(sql.APPEND_FUNCTION)
            except asyncpg.PostgresError as exc:  # no TEMP privilege, say: every batch takes the locked path
                if self.one_trip:
                    log.warning("log writer: no append function (%s); every batch takes the locked path", exc)
                self.one_trip = False
            except BaseException:
                conn.terminate()
                raise
            self._conn = conn
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def _append_at_once(
        self, conn: Any, requests: Sequence[Submitted]
    ) -> tuple[list[Outcome], datetime | None] | None:
        """One round trip, decided on the guess that every session to end is still open and no caller is
        revoked; None if it was not (nothing written). A batch of watermarks needs the lock's state to decide,
        never this."""
        intents = [r.intents for r in requests]
        sids = list(dict.fromkeys(_sessions_to_end(intents)))
        guess = LockedState(open_sessions={sid: ("", _UNUSED) for sid in sids}, watermarks={})
        decided = decide(intents, guess, datetime.now(UTC), self._ttl)
        flat = [e for events in decided for e in events]
        callers = _callers(requests)
        if not flat and not callers[0]:
            return list(decided), None
        try:
            row = await conn.fetchrow(
                sql.APPEND, 0, *sql.columns(flat), self._lock_timeout_ms, sids, *callers
            )
        except asyncpg.LockNotAvailableError as exc:
            raise AppendError(
                f"the log's append lock was not free within {self._lock_timeout_ms} ms"
            ) from exc
        except asyncpg.PostgresError:
            raise  # the statement failed whole, as its own transaction: the connection is ready for the next
        except BaseException:
            self._drop()  # cut short (lost link, cancelled): the connection's state is unknown
            raise
        if row is None:
            return None
        base, recorded = row
        return list(_positioned(decided, int(base))), recorded if flat else None

    async def _locked_commit(
        self, conn: Any, requests: Sequence[Submitted]
    ) -> tuple[list[Outcome], datetime | None]:
        """Decide under the lock, on the state read there: four or five round trips, for any batch."""
        try:
            # One round trip: a simple-query batch runs as one implicit sequence; the lock is the last step.
            await conn.execute(
                "BEGIN ISOLATION LEVEL READ COMMITTED; "
                f"SET LOCAL lock_timeout = {self._lock_timeout_ms}; "
                f"SELECT pg_advisory_xact_lock({APPEND_LOCK_KEY})"
            )
            results, recorded = await self._write(conn, requests)
            head = max(
                (e.position or 0 for o in results if not isinstance(o, InvalidToken) for e in o), default=0
            )
            # NOTIFY and COMMIT in one round trip; the NOTIFY is delivered at commit.
            notify = f"SELECT pg_notify('{NOTIFY_CHANNEL}', '{head}'); " if head else ""
            await conn.execute(notify + "COMMIT")
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
            await self.close()

    async def _write(self, conn: Any, requests: Sequence[Submitted]) -> tuple[list[Outcome], datetime | None]:
        """Under the lock: each request's events, positioned, or the refusal of its revoked caller, and the
        events' recorded_at (the write's clock_timestamp(), under the lock)."""
        refused = await self._revoked_callers(conn, requests)
        intents = [() if i in refused else r.intents for i, r in enumerate(requests)]
        sids = _sessions_to_end(intents)
        users = list(dict.fromkeys(i.user_id for each in intents for i in each if isinstance(i, RevokeUser)))
        head, open_sids, open_users, created, marks = await conn.fetchrow(
            sql.STATE, sids, users, c.GLOBAL_SUBJECT
        )
        state = LockedState(
            open_sessions={
                sid: (user, at)
                for sid, user, at in zip(open_sids or [], open_users or [], created or [], strict=True)
            },
            watermarks=dict(zip(users, marks or [], strict=True)),
        )
        decided = decide(intents, state, datetime.now(UTC), self._ttl)
        flat = [e for events in decided for e in events]
        recorded = None
        if flat:
            _, recorded = await conn.fetchrow(sql.WRITE, int(head), *sql.columns(flat))
        return [
            InvalidToken("token has been revoked") if i in refused else events
            for i, events in enumerate(_positioned(decided, int(head)))
        ], recorded

    async def _revoked_callers(self, conn: Any, requests: Sequence[Submitted]) -> set[int]:
        """The requests (by index) whose caller's token a revocation names, read under the lock."""
        numbered = [i for i, r in enumerate(requests) if r.caller is not None]
        if not numbered:
            return set()
        rows = await conn.fetch(sql.REVOKED, *_callers(requests))
        return {numbered[n - 1] for (n,) in rows}
