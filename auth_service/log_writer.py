"""Group commit: one writer per process appends every request's revocations, many requests per transaction.

Why: each append serialises on the log's lock (log.py), so one transaction per logout caps the whole service
at one lock hand-over plus several round trips per logout. The writer instead takes whatever requests queued
while its previous batch committed, and writes them all in one transaction on its own asyncpg connection.

A batch of logouts, RFC 7009 revocations and ended sessions (no watermark in it) costs one round trip: the
writer decides on the guess that every session it ends is still open (the request checked it moments ago)
and that no caller's token is revoked (a logout hands its token's check to the writer: `submit(caller=)`),
and calls the append function, a PL/pgSQL function made in pg_temp on its connection. Run with no transaction
around it, that one statement is a transaction of its own: it takes the lock, checks the guess, reads the
head, writes the events and the projections set-wise, NOTIFYs and commits. If the guess failed (a session
ended or a caller was revoked meanwhile) it writes nothing, and the writer decides again on the locked path,
which any batch with a watermark (logout everywhere, revoking a user) takes at once, since a watermark
depends on the one before:

    BEGIN; SET LOCAL lock_timeout; pg_advisory_xact_lock   one round trip (a simple-query batch)
    the callers' revocations (REVOKED_CALLERS), if any     one prepared statement
    the head, and the state the decisions need             one prepared statement
    INSERT the events (unnest arrays), the projections
    set-wise (projections.REVOCATION_ROWS, session_ends),
    now() (the events' recorded_at)                         one prepared statement
    pg_notify; COMMIT                                       one round trip

Both paths run the same write (_WRITE_TEMPLATE), so what the projections become cannot differ between them.

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
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg

from auth_service import contract as c
from auth_service.errors import AppendError, InvalidToken
from auth_service.intents import Caller, EndSessions, Intent, LockedState, RevokeUser, decide
from auth_service.log import APPEND_LOCK_KEY, NOTIFY_CHANNEL
from auth_service.projections import REVOCATION_ROWS, session_ends

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

# The write, over the batch's events as arrays (one per column) and `base`, the position before the first of
# them: the events, the projections set-wise (projections.REVOCATION_ROWS, session_ends), and the
# transaction's now() (the events' recorded_at). Written once with named arguments: `_numbered` makes it a
# prepared statement ($1, $2, ...), and the append function (below) runs it over its own arguments.
_ARGS = (
    ("base", "bigint"),
    ("types", "text[]"),
    ("occurred", "timestamptz[]"),
    ("user_ids", "text[]"),
    ("session_ids", "uuid[]"),
    ("jtis", "text[]"),
    ("kids", "text[]"),
    ("not_befores", "timestamptz[]"),
    ("expires", "timestamptz[]"),
    ("reasons", "text[]"),
    ("event_ids", "uuid[]"),
    ("versions", "smallint[]"),
    ("payloads", "jsonb[]"),
)

_OPEN_SESSIONS = (
    "(SELECT session_id, user_id, created_at, 0 AS start_position FROM sessions WHERE revoked_at IS NULL)"
)

_WRITE_TEMPLATE = f"""
WITH batch AS MATERIALIZED (
    SELECT {{base}} + n AS position, type, occurred_at, user_id, session_id, jti, kid, not_before, expires_at,
           reason
    FROM unnest({{types}}, {{occurred}}, {{user_ids}}, {{session_ids}}, {{jtis}}, {{kids}}, {{not_befores}},
                {{expires}}, {{reasons}})
         WITH ORDINALITY
         AS b(type, occurred_at, user_id, session_id, jti, kid, not_before, expires_at, reason, n)),
logged AS (
    INSERT INTO event_log (position, event_id, type, occurred_at, user_id, session_id, jti, expires_at,
                           schema_version, payload)
    SELECT {{base}} + n, event_id, type, occurred_at, user_id, session_id, jti, expires_at, schema_version,
           payload || jsonb_build_object('position', {{base}} + n, 'prev_position', {{base}} + n - 1)
    FROM unnest({{event_ids}}, {{types}}, {{occurred}}, {{user_ids}}, {{session_ids}}, {{jtis}}, {{expires}},
                {{versions}}, {{payloads}})
         WITH ORDINALITY
         AS x(event_id, type, occurred_at, user_id, session_id, jti, expires_at, schema_version, payload, n)),
revoked AS (
    INSERT INTO revocations (kind, subject, not_before, expires_at, position)
    {{{{revocation_rows}}}}
    ON CONFLICT (kind, subject) DO UPDATE SET
        not_before = greatest(revocations.not_before, excluded.not_before),
        expires_at = greatest(revocations.expires_at, excluded.expires_at),
        position = greatest(revocations.position, excluded.position)),
ended AS (
    UPDATE sessions SET revoked_at = x.revoked_at, revoked_reason = x.revoked_reason
    FROM ({session_ends(_OPEN_SESSIONS, "batch", None)}) AS x
    WHERE sessions.session_id = x.session_id)
SELECT {{base}}::bigint, now()
""".replace("{{revocation_rows}}", REVOCATION_ROWS.format(events="batch"))


# The callers (each a request's access token, intents.Caller) that a revocation names, by their number in
# the arrays (1 on): the rule of intents.revocation_reason in SQL (tests/unit/test_auth_rules.py holds the
# two equal). A watermark (user, global) revokes a token issued before it; any other row, the token it names.
_CALLER_ARGS = (
    ("jtis", "text[]"),
    ("sids", "text[]"),
    ("users", "text[]"),
    ("kids", "text[]"),
    ("iats", "bigint[]"),
)
REVOKED_CALLERS = f"""
SELECT DISTINCT q.n
FROM unnest({{jtis}}, {{sids}}, {{users}}, {{kids}}, {{iats}})
     WITH ORDINALITY AS q(jti, sid, usr, kid, iat, n)
CROSS JOIN LATERAL (VALUES ('jti', q.jti), ('session', q.sid), ('user', q.usr), ('key', q.kid),
                           ('global', '{c.GLOBAL_SUBJECT}')) AS k(kind, subject)
JOIN revocations r ON r.kind = k.kind AND r.subject = k.subject
WHERE r.kind NOT IN ('user', 'global') OR q.iat < extract(epoch FROM r.not_before)"""


def _numbered(template: str) -> str:
    """The template as a prepared statement: each argument by its number, with its type."""
    return template.format(**{name: f"${i}::{kind}" for i, (name, kind) in enumerate(_ARGS, 1)})


_WRITE = _numbered(_WRITE_TEMPLATE)
_REVOKED = REVOKED_CALLERS.format(**{name: f"${i}::{kind}" for i, (name, kind) in enumerate(_CALLER_ARGS, 1)})

# The append function, one round trip for a batch whose decisions need no more than "these sessions are still
# open" (logouts, RFC 7009, ending a session): run as one statement with no transaction around it, it is a
# transaction of its own, so BEGIN, the lock, the write and COMMIT cost one round trip instead of four.
# The decisions were made before it, on the guess that every session the batch ends is open and that no
# caller's token is revoked; it takes the lock, checks the guess, and writes only if it held (no row back if
# not: the writer decides again under the lock, where it finds out which). PL/pgSQL runs each statement of
# a VOLATILE function in a snapshot of its own, taken when the statement starts (READ COMMITTED), so the
# head is read after the lock is held, as log.py's protocol asks.
# It lives in pg_temp, made on each of the writer's connections: the one definition of the write stays here.
_APPEND_FUNCTION = f"""
CREATE FUNCTION pg_temp.tokenlife_append(
    {", ".join(f"a_{name} {kind}" for name, kind in _ARGS)}, a_lock_timeout_ms integer, a_open uuid[],
    {", ".join(f"a_c_{name} {kind}" for name, kind in _CALLER_ARGS)})
RETURNS TABLE (appended_after bigint, committed_at timestamptz)
LANGUAGE plpgsql VOLATILE AS $fn$
BEGIN
    PERFORM set_config('lock_timeout', a_lock_timeout_ms::text, true);
    PERFORM pg_advisory_xact_lock({APPEND_LOCK_KEY});
    IF (SELECT count(*) FROM sessions WHERE session_id = ANY(a_open) AND revoked_at IS NULL)
       <> cardinality(a_open) THEN
        RETURN;
    END IF;
    IF EXISTS ({REVOKED_CALLERS.format(**{name: f"a_c_{name}" for name, _ in _CALLER_ARGS})}) THEN
        RETURN;
    END IF;
    SELECT coalesce(max(position), 0) INTO a_base FROM event_log;
    RETURN QUERY {_WRITE_TEMPLATE.format(**{name: f"a_{name}" for name, _ in _ARGS})};
    IF cardinality(a_types) > 0 THEN  -- a batch of checks alone appends nothing: nothing to tell
        PERFORM pg_notify('{NOTIFY_CHANNEL}', (a_base + cardinality(a_types))::text);
    END IF;
END
$fn$
"""
_APPEND = "SELECT * FROM pg_temp.tokenlife_append({})".format(
    ", ".join(f"${i}" for i in range(1, len(_ARGS) + len(_CALLER_ARGS) + 3))
)


def _columns(events: Sequence[c.Event]) -> list[Any]:
    """The events as the write's arrays, `base` excluded (_ARGS in order, from `types` on)."""
    cols: list[list[Any]] = [[] for _ in range(len(_ARGS) - 1)]
    for e in events:
        values = (
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


def _caller_columns(requests: list[_Request]) -> list[list[Any]]:
    """The callers of the requests that have one, as REVOKED_CALLERS's arrays (_CALLER_ARGS in order)."""
    callers = [r.caller for r in requests if r.caller is not None]
    return [
        [x.jti for x in callers],
        [x.session_id for x in callers],
        [x.user_id for x in callers],
        [x.kid for x in callers],
        [x.iat for x in callers],
    ]


def _sessions_to_end(requests: Sequence[Sequence[Intent]]) -> list[uuid.UUID]:
    return [s for intents in requests for i in intents if isinstance(i, EndSessions) for s in i.session_ids]


# A batch without watermarks decides on which sessions are open, never on their user or creation time.
_UNUSED = datetime.min.replace(tzinfo=UTC)


def _positioned(decided: list[list[c.Event]], base: int) -> list[list[c.Event]]:
    """Each request's events with positions from base + 1 on, in queue order, as the write numbers them."""
    position = base
    results: list[list[c.Event]] = []
    for events in decided:
        positioned: list[c.Event] = []
        for event in events:
            position += 1
            positioned.append(event.model_copy(update={"position": position, "prev_position": position - 1}))
        results.append(positioned)
    return results


class _Request:
    __slots__ = ("intents", "caller", "done")

    def __init__(
        self, intents: Sequence[Intent], caller: Caller | None, done: asyncio.Future[list[c.Event]]
    ) -> None:
        self.intents = intents
        self.caller = caller
        self.done = done


# What a request gets: its events, or the refusal of its caller's token.
Outcome = list[c.Event] | InvalidToken


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
        self._one_trip = True  # False once the append function could not be made on a connection
        # Batches the append function refused (a session ended or a caller revoked meanwhile), decided again
        # under the lock.
        self.guesses_missed = 0
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

    async def submit(self, intents: Sequence[Intent], caller: Caller | None = None) -> list[c.Event]:
        """Append the events these intents call for, in one batch with others; returns them positioned.

        With a `caller`, its token is checked against the revocations under the lock, in the same round trip:
        InvalidToken, and nothing appended, if it is revoked by then."""
        if self._task is None:
            raise AppendError("the log writer is not running")
        done: asyncio.Future[list[c.Event]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Request(intents, caller, done))
        return await done

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            live = [r for r in batch if not r.done.cancelled()]
            try:
                results, recorded = await self._commit(live)
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
            self._hand_off([o for o in results if not isinstance(o, InvalidToken)], recorded)
            for r, outcome in zip(live, results, strict=True):
                if r.done.done():
                    continue
                if isinstance(outcome, InvalidToken):
                    r.done.set_exception(outcome)
                else:
                    r.done.set_result(outcome)

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
            conn = await asyncpg.connect(self._dsn)
            try:
                await conn.execute(_APPEND_FUNCTION)
            except asyncpg.PostgresError as exc:  # no TEMP privilege, say: every batch takes the locked path
                if self._one_trip:
                    log.warning("log writer: no append function (%s); every batch takes the locked path", exc)
                self._one_trip = False
            except BaseException:
                conn.terminate()
                raise
            self._conn = conn
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), 2.0)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                conn.terminate()

    async def _commit(self, requests: list[_Request]) -> tuple[list[Outcome], datetime | None]:
        conn = await self._connection()
        if self._one_trip and not any(isinstance(i, RevokeUser) for r in requests for i in r.intents):
            done = await self._append_at_once(conn, requests)
            if done is not None:
                return done
            self.guesses_missed += 1
        return await self._locked_commit(conn, requests)

    async def _append_at_once(
        self, conn: Any, requests: list[_Request]
    ) -> tuple[list[Outcome], datetime | None] | None:
        """One round trip, decided on the guess that every session to end is still open and no caller is
        revoked; None if it was not (nothing written). A batch of watermarks needs the lock's state to decide,
        never this."""
        intents = [r.intents for r in requests]
        sids = list(dict.fromkeys(_sessions_to_end(intents)))
        guess = LockedState(open_sessions={sid: ("", _UNUSED) for sid in sids}, watermarks={})
        decided = decide(intents, guess, datetime.now(UTC), self._ttl)
        flat = [e for events in decided for e in events]
        callers = _caller_columns(requests)
        if not flat and not callers[0]:
            return list(decided), None
        try:
            row = await conn.fetchrow(_APPEND, 0, *_columns(flat), self._lock_timeout_ms, sids, *callers)
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
        self, conn: Any, requests: list[_Request]
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
            await self._close()

    async def _write(self, conn: Any, requests: list[_Request]) -> tuple[list[Outcome], datetime | None]:
        """Under the lock: each request's events, positioned, or the refusal of its revoked caller, and the
        events' recorded_at (the transaction's now())."""
        refused = await self._revoked_callers(conn, requests)
        intents = [() if i in refused else r.intents for i, r in enumerate(requests)]
        sids = _sessions_to_end(intents)
        users = list(dict.fromkeys(i.user_id for each in intents for i in each if isinstance(i, RevokeUser)))
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
        decided = decide(intents, state, datetime.now(UTC), self._ttl)
        flat = [e for events in decided for e in events]
        recorded = None
        if flat:
            _, recorded = await conn.fetchrow(_WRITE, int(head), *_columns(flat))
        positioned = _positioned(decided, int(head))
        return [
            InvalidToken("token has been revoked") if i in refused else events
            for i, events in enumerate(positioned)
        ], recorded

    async def _revoked_callers(self, conn: Any, requests: list[_Request]) -> set[int]:
        """The requests (by index) whose caller's token a revocation names, read under the lock."""
        numbered = [i for i, r in enumerate(requests) if r.caller is not None]
        if not numbered:
            return set()
        rows = await conn.fetch(_REVOKED, *_caller_columns(requests))
        return {numbered[n - 1] for (n,) in rows}
