"""The event log: append with gap-free positions in commit order, and read by position.

Why a lock and not a sequence: a bigserial value is taken when a row is inserted, not when its transaction
commits. Two appenders can take positions 7 and 8, and 8 can commit first. A reader that has seen 8 asks for
"after 8" and never sees 7: the revocation at 7 is skipped forever. A rolled-back transaction also burns its
value, leaving a hole that a careful reader would wait on forever.

So every append takes one transaction-level advisory lock, reads the head, and writes head+1..head+n. The
lock is held until commit, and Postgres makes a commit visible before it releases the transaction's locks, so
the next appender (which reads the head in a statement that starts after it got the lock) sees the previous
commit and continues from it. Positions are therefore dense and become visible in order. A rolled-back append
writes nothing and frees its positions for the next appender. The appending transaction must run in READ
COMMITTED: under REPEATABLE READ its snapshot could predate the lock and it would read a stale head.

Every append of the service goes through the process's log writer (writer.py), which takes this lock for one
batch's statements. `appending(conn, lock_timeout_ms=...)` is the lock for one transaction of the caller's:
the projections' rebuild holds it (it appends nothing), and tests seed a log with `append()`. It takes the
lock once, with the configured timeout (`lock_timeout` bounds the wait), and hands out an Appender that knows
it holds it; an Appender used after its block ends refuses. The NOTIFY is delivered at commit, never for a
rolled-back append.

The lock order, the one rule for every appending transaction: gates, then rows, then the append lock, and
the append lock's holder never waits for a gate or a row that a transaction waiting for the append lock holds.
A gate is a transaction-level advisory lock: one for the whole log (GLOBAL_GATE_KEY), taken shared by the
writer's ordinary batches and exclusively by a batch that revokes a signing key and by `appending()`, then
one per user and one per session, in key order (gates.py says which a batch takes, shared or alone). A
session's rows are written only by a transaction that holds its gate and its user's, and a user's password
and revocations only by one that holds the user's alone, so the writer decides on them and writes them before
it takes the append lock, and the lock is held only for what needs the position: the head, the events and
the revocations (batch_sql.py says which).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from auth_service import contract as c
from auth_service.db.tables import event_log
from auth_service.errors import AppendError
from auth_service.log.projections import decode_row, project
from auth_service.log.rebuild import rebuild

# Any fixed 64-bit key would do; this one spells "toklife" so it is recognisable in pg_locks.
APPEND_LOCK_KEY = 0x746F6B6C696665
# The gates (see the lock order above, and gates.py): the whole log's, a 64-bit key of its own ("toklifg"),
# and each user's and each session's, keyed (USER_GATE_CLASS, hashtext(user_id)) and (SESSION_GATE_CLASS,
# hashtext(session_id)) in the two-key space, which never meets the 64-bit one.
GLOBAL_GATE_KEY = 0x746F6B6C696667
USER_GATE_CLASS = 0x746F6B6C
SESSION_GATE_CLASS = 0x746F6B73
NOTIFY_CHANNEL = "tokenlife_log"
MAX_PAGE = 1000
LOCK_NOT_AVAILABLE = "55P03"


async def _take_lock(conn: AsyncConnection, lock_timeout_ms: int) -> None:
    await conn.execute(text(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}"))
    try:
        # The whole log's gate first, exclusively: every batch of the writers has finished or not begun.
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": GLOBAL_GATE_KEY})
        row = (
            await conn.execute(
                text("SELECT pg_advisory_xact_lock(:key), current_setting('transaction_isolation')"),
                {"key": APPEND_LOCK_KEY},
            )
        ).one()
    except DBAPIError as exc:
        if _sqlstate(exc) == LOCK_NOT_AVAILABLE:
            raise AppendError(f"the log's append lock was not free within {lock_timeout_ms} ms") from exc
        raise
    if row[1] != "read committed":
        raise AppendError(f"appends need READ COMMITTED isolation, the transaction runs in {row[1]}")


class Appender:
    """Appends to the log in one transaction that holds the append lock; made only by `appending()`."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn
        self._holding = True

    async def append(self, events: Sequence[c.Event]) -> list[c.Event]:
        """Append events, update the projections; returns them positioned. Visible once the caller commits."""
        if not self._holding:
            raise AppendError("append outside its log.appending() block: the append lock is not held")
        if not events:
            return []
        conn = self._conn
        head = await read_head(conn)
        appended = positioned(events, head)
        await conn.execute(event_log.insert(), [_row(e) for e in appended])
        for event in appended:
            await project(conn, event)
        await conn.execute(
            text("SELECT pg_notify(:channel, :head)"),
            {"channel": NOTIFY_CHANNEL, "head": str(head + len(events))},
        )
        return appended

    async def rebuild_projections(self) -> int:
        """Recompute every projection from the log, set-based; returns the events in the log.

        Under the append lock, so no append interleaves with the replay.
        """
        if not self._holding:
            raise AppendError("rebuild outside its log.appending() block: the append lock is not held")
        return await rebuild(self._conn)


@asynccontextmanager
async def appending(conn: AsyncConnection, *, lock_timeout_ms: int) -> AsyncIterator[Appender]:
    """Take the log's append lock for the rest of the caller's transaction, and append within the block."""
    await _take_lock(conn, lock_timeout_ms)
    appender = Appender(conn)
    try:
        yield appender
    finally:
        appender._holding = False


async def append(conn: AsyncConnection, events: Sequence[c.Event], *, lock_timeout_ms: int) -> list[c.Event]:
    """Take the lock and append in one step, for a transaction that has nothing else to do under the lock."""
    async with appending(conn, lock_timeout_ms=lock_timeout_ms) as appender:
        return await appender.append(events)


def positioned(events: Sequence[c.Event], after: int) -> list[c.Event]:
    """The events numbered after a head: after + 1, after + 2, ... (prev_position one below each)."""
    return [
        e.model_copy(update={"position": after + i, "prev_position": after + i - 1})
        for i, e in enumerate(events, 1)
    ]


def _sqlstate(exc: DBAPIError) -> str | None:
    code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return str(code) if code else None


def _row(event: c.Event) -> dict[str, Any]:
    return {
        "position": event.position,
        "event_id": event.event_id,
        "type": event.type.value,
        "occurred_at": event.occurred_at,
        "user_id": getattr(event, "user_id", None),
        "session_id": getattr(event, "session_id", None),
        "jti": getattr(event, "jti", None),
        "expires_at": event.expires_at,
        "schema_version": event.schema_version,
        "payload": c.to_json_dict(event),
    }


async def read_head(conn: AsyncConnection) -> int:
    """The position of the last committed event visible to this statement (0 for an empty log)."""
    return int((await conn.execute(select(func.coalesce(func.max(event_log.c.position), 0)))).scalar_one())


async def read_after(
    conn: AsyncConnection, after: int, limit: int = MAX_PAGE
) -> list[c.Event | c.UnknownEvent]:
    """Events with position > after, in position order, at most `limit` (capped at MAX_PAGE)."""
    rows = await read_payloads_after(conn, after, limit)
    return [decode_row(position, payload) for position, payload in rows]


async def read_payloads_after(
    conn: AsyncConnection, after: int, limit: int = MAX_PAGE
) -> list[tuple[int, Any]]:
    """Raw (position, payload) pairs after a position, for passing events on without decoding them."""
    limit = max(1, min(limit, MAX_PAGE))
    rows = await conn.execute(
        select(event_log.c.position, event_log.c.payload)
        .where(event_log.c.position > after)
        .order_by(event_log.c.position)
        .limit(limit)
    )
    return [(int(r.position), with_positions(r.payload, int(r.position))) for r in rows]


def with_positions(payload: dict[str, Any], position: int) -> dict[str, Any]:
    """A stored payload with its position and prev_position from the position column (the truth)."""
    return {**payload, "position": position, "prev_position": position - 1}


async def read_page(conn: AsyncConnection, after: int, limit: int = MAX_PAGE) -> c.EventPage:
    """One page of the events API: the events after a position and the head they were read at."""
    rows = await read_payloads_after(conn, after, limit)
    head = await read_head(conn)
    return c.EventPage(head=max(head, rows[-1][0] if rows else 0), events=[p for _, p in rows])
