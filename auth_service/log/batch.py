"""One batch of the log writer (writer.py), committed on the writer's own asyncpg connection.

Most batches cost one round trip: logouts, RFC 7009 revocations, ended sessions, logins and refreshes. The
committer decides on a guess: every session the batch ends or refreshes is still open and every refresh token
it presents unrotated (the request read them moments ago), no login's prepared token is below its user's
watermark, and no caller's token is revoked (a logout hands its token's check to the writer:
`submit(caller=)`). It then calls the append function, a PL/pgSQL function made in pg_temp on its connection.
Run with no transaction around it, that one statement is a transaction of its own: it takes the gates of the
batch's users (store.py's lock order), checks the guess, writes their sessions, refresh tokens and kept
answers set-wise, then takes the append lock, reads the head, writes the events and the revocations, NOTIFYs
and commits. If the guess failed it writes nothing, and the committer decides again on the locked path, which
any batch with a watermark (logout everywhere, revoking a user), a password change or a key revocation takes
at once, since those decisions need the state read under the gates:

    BEGIN; SET LOCAL lock_timeout; the log's gate          one round trip (a simple-query batch)
    the users' and sessions' gates, in key order            one prepared statement
    the callers' revocations (REVOKED_CALLERS), if any     one prepared statement
    the state the decisions need (locked_state.STATE)      one prepared statement
    the append function, with nothing left to check       one round trip
    COMMIT                                                  one round trip

Both paths run the same writes (batch_sql.py holds the statements), so the projections cannot differ, and
neither signs, seals or hashes anything under the lock: the requests did that before they were queued. Where
the append function cannot be made (no TEMP privilege), the locked path runs its statements one by one, in
the same order, and every batch takes it.

Why the gates: the append lock serialises every batch of every process, so what it covers bounds the log. It
used to cover the whole batch; it now covers the head, the events and the revocations, while the rows of each
user and session are written beside other processes' batches, by one batch at a time (the measured holds are
in docs/design/write-path.md).

The lock protocol is store.py's: the lock is taken before the head is read, in a later statement, so positions
stay dense and equal to commit order. The decisions are decide.py's, made in queue order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import asyncpg

from auth_service.errors import AppendError
from auth_service.log import arrays, one_trip
from auth_service.log import batch_sql as sql
from auth_service.log import gates as gating
from auth_service.log.decide import decide
from auth_service.log.gates import gates
from auth_service.log.intents import (
    Caller,
    ChangePassword,
    Decision,
    Intent,
    RevokeKey,
    RevokeUser,
    Verdict,
    Writes,
)
from auth_service.log.locked_state import read_locked_state
from auth_service.log.store import APPEND_LOCK_KEY, NOTIFY_CHANNEL, positioned

log = logging.getLogger("tokenlife.log")


class Submitted(Protocol):
    """What the committer needs of a queued request: its intents, and its caller's token if it brought one."""

    @property
    def intents(self) -> Sequence[Intent]: ...

    @property
    def caller(self) -> Caller | None: ...


def _positioned(decided: list[Decision], base: int) -> list[Decision]:
    """Each request's events with positions from base + 1 on, in queue order, as the writes number them."""
    for decision in decided:
        decision.events = positioned(decision.events, base)
        base += len(decision.events)
    return decided


_GATES = sql.Statement(gating.GATES, "gate_users")
# The append function's arguments when the locked path calls it: its gates held, its callers checked.
_NOTHING_TO_CHECK = gates((), ()) | one_trip.guess(())[1] | arrays.caller_columns(())
# The head and the moment (the events' recorded_at), read in a statement that starts once the append lock is
# held (store.py's protocol): the statement-by-statement path's, after its gates and its rows.
_HEAD = "SELECT coalesce(max(position), 0), clock_timestamp() FROM event_log"


async def _execute(conn: Any, statements: Sequence[sql.Statement], values: dict[str, Any]) -> None:
    """Each statement whose rows are not empty, in order, as a prepared statement of its own."""
    for statement in statements:
        if values[statement.rows]:
            await conn.execute(statement.prepared, *(values[name] for name in statement.args))


def _needs_lock(requests: Sequence[Submitted]) -> bool:
    return any(isinstance(i, RevokeUser | ChangePassword | RevokeKey) for r in requests for i in r.intents)


class BatchCommitter:
    """The log writer's connection, and the two ways it commits a batch (see the module's docstring)."""

    def __init__(
        self, dsn: str, *, lock_timeout_ms: int, access_token_ttl: int, refresh_grace: float = 0.0
    ) -> None:
        self._dsn = dsn
        self._lock_timeout_ms = int(lock_timeout_ms)
        self._ttl = access_token_ttl
        self._grace = timedelta(seconds=refresh_grace)
        self._conn: Any = None
        self.one_trip = True  # False once the append function could not be made on a connection
        # Batches whose guess failed (a session ended, a token rotated or a caller revoked meanwhile), decided
        # again under the lock.
        self.guesses_missed = 0
        self.lock_held = 0.0  # seconds the last committed batch held the append lock
        self.lock_wait = 0.0  # and waited for it

    async def commit(self, requests: Sequence[Submitted]) -> tuple[list[Decision], datetime | None]:
        """Each request's decision, its events positioned, and their recorded_at (None when nothing was
        appended); raises (AppendError, a database error) with nothing committed."""
        conn = await self._connection()
        self.lock_held = self.lock_wait = 0.0
        if self.one_trip and not _needs_lock(requests):
            done = await self._append_at_once(conn, requests)
            if done is not None:
                return done
            self.guesses_missed += 1
        return await self._locked_commit(conn, requests)

    async def prune_successors(self) -> None:
        """Delete the kept answers whose grace window has passed (no lock: they are no part of the log)."""
        conn = await self._connection()
        await conn.execute("DELETE FROM refresh_successors WHERE expires_at < now()")

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
                await conn.execute(one_trip.APPEND_FUNCTION)
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

    def _values(
        self, decided: list[Decision], writes: Writes, requests: Sequence[Submitted], now: datetime
    ) -> dict[str, Any]:
        flat = [e for d in decided for e in d.events]
        return {
            **arrays.columns(flat),
            **arrays.write_columns(writes),
            **arrays.caller_columns([r.caller for r in requests if r.caller is not None]),
            "rotated_at": now,
            "succ_until": now + self._grace,
            "keys_at": now,
        }

    async def _append_at_once(
        self, conn: Any, requests: Sequence[Submitted]
    ) -> tuple[list[Decision], datetime | None] | None:
        """One round trip, decided on the guess (see the module); None: it did not hold, nothing written."""
        intents = [r.intents for r in requests]
        guess, checks = one_trip.guess(intents)
        now = datetime.now(UTC)
        decided, writes = decide(intents, guess, now, self._ttl, self._grace)
        values = self._values(decided, writes, requests, now) | checks
        if not values["types"] and not writes and not values["c_jtis"]:
            return decided, None  # nothing to write and nothing to check
        values |= gates(intents, [r.caller for r in requests if r.caller is not None])
        try:
            row = await conn.fetchrow(
                one_trip.APPEND, *one_trip.function_values(values), self._lock_timeout_ms
            )
        except asyncpg.LockNotAvailableError as exc:
            raise AppendError(f"the log's locks were not free within {self._lock_timeout_ms} ms") from exc
        except asyncpg.PostgresError:
            raise  # the statement failed whole, as its own transaction: the connection is ready for the next
        except BaseException:
            self._drop()  # cut short (lost link, cancelled): the connection's state is unknown
            raise
        if row is None:
            return None
        base, recorded, self.lock_held, self.lock_wait = row
        return _positioned(decided, int(base)), recorded if values["types"] else None

    async def _locked_commit(
        self, conn: Any, requests: Sequence[Submitted]
    ) -> tuple[list[Decision], datetime | None]:
        """Decide under the gates, on the state read there: a few round trips, for any batch."""
        intents = [r.intents for r in requests]
        gated = gates(intents, [r.caller for r in requests if r.caller is not None])
        try:
            # One round trip (a simple-query batch runs as one sequence), the log's gate its last step.
            await conn.execute(
                "BEGIN ISOLATION LEVEL READ COMMITTED; "
                f"SET LOCAL lock_timeout = {self._lock_timeout_ms}; "
                + (gating.GLOBAL_GATE_ALONE if gated["gate_alone"] else gating.GLOBAL_GATE)
            )
            if gated["gate_users"] or gated["gate_sessions"]:
                await conn.execute(_GATES.prepared, *(gated[name] for name in _GATES.args))
            decided, appended, recorded = await self._write(conn, requests)
            return decided, recorded if appended else None
        except BaseException as exc:
            await self._abandon(conn)
            if isinstance(exc, asyncpg.LockNotAvailableError):
                raise AppendError(f"the log's locks were not free within {self._lock_timeout_ms} ms") from exc
            raise

    async def _abandon(self, conn: Any) -> None:
        # Roll back; a connection that cannot even do that is dropped (reconnected for the next batch).
        try:
            if not conn.is_closed():
                await asyncio.wait_for(conn.execute("ROLLBACK"), 2.0)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncio.CancelledError):
            await self.close()

    async def _write(
        self, conn: Any, requests: Sequence[Submitted]
    ) -> tuple[list[Decision], int, datetime | None]:
        """Under the gates: decide, write, take the append lock, append, commit. Each request's decision,
        positioned, the events appended, and their recorded_at (a clock_timestamp() under the lock)."""
        refused = await self._revoked_callers(conn, requests)
        intents = [() if i in refused else r.intents for i, r in enumerate(requests)]
        state, now = await read_locked_state(conn, intents)
        decided, writes = decide(intents, state, now, self._ttl, self._grace)
        for i in refused:
            decided[i].verdict = Verdict.CALLER_REVOKED
        values = self._values(decided, writes, (), now)
        appended = len(values["types"])
        if not appended and not writes:
            await conn.execute("COMMIT")
            return decided, 0, None
        if self.one_trip:  # the rest in one round trip: no guess to check, the gates held already
            values |= _NOTHING_TO_CHECK
            row = await conn.fetchrow(
                one_trip.APPEND, *one_trip.function_values(values), self._lock_timeout_ms
            )
            base, recorded, held, self.lock_wait = row
            committing = time.monotonic()
            await conn.execute("COMMIT")
            self.lock_held = held + time.monotonic() - committing  # the lock is held until COMMIT answers
            return _positioned(decided, int(base)), appended, recorded
        await _execute(conn, sql.BEFORE_LOCK, values)
        asked = time.monotonic()
        await conn.execute(f"SELECT pg_advisory_xact_lock({APPEND_LOCK_KEY})")
        locked = time.monotonic()
        self.lock_wait = locked - asked  # with the round trip: an upper bound
        base, recorded = await conn.fetchrow(_HEAD)  # a statement begun once the lock is held
        await _execute(conn, sql.UNDER_LOCK, values | {"base": base, "recorded": recorded})
        # NOTIFY and COMMIT in one round trip; the NOTIFY is delivered at commit.
        notify = f"SELECT pg_notify('{NOTIFY_CHANNEL}', '{base + appended}'); " if appended else ""
        await conn.execute(notify + "COMMIT")
        self.lock_held = time.monotonic() - locked
        return _positioned(decided, int(base)), appended, recorded

    async def _revoked_callers(self, conn: Any, requests: Sequence[Submitted]) -> set[int]:
        """The requests (by index) whose caller's token a revocation names, read under the lock."""
        numbered = [i for i, r in enumerate(requests) if r.caller is not None]
        if not numbered:
            return set()
        callers = arrays.caller_columns([r.caller for r in requests if r.caller is not None])
        rows = await conn.fetch(sql.REVOKED, *callers.values())
        return {numbered[n - 1] for (n,) in rows}
