"""Rebuilding the projections from the whole log, at bulk-load speed.

The rules are projections.py's set-based ones (`REVOCATION_ROWS`, `session_ends`); this module decides how
their rows are computed and written, because at a million events the writing is most of the cost:

- TRUNCATE, then the tables' indexes and key constraints dropped and built again after the load (one sort
  per index instead of a B-tree insertion per row), all in the caller's transaction, so a reader waits for
  the commit and never sees a half-built or index-less table;
- the rows computed by `COPY (SELECT ...) TO` in binary and loaded by `COPY ... FROM` (multi-row inserts,
  far less WAL and executor work than INSERT ... SELECT);
- two connections at once: while the appending connection computes, loads and indexes the revocations, a
  second connection of the same engine computes the sessions and streams them to it. The second connection
  only reads the log, in one REPEATABLE READ snapshot taken after the caller took the append lock, so it sees
  exactly the log the caller sees (checked: both read the same head, else all runs on the caller's
  connection, for a caller that appended in its own transaction before rebuilding).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from auth_service.log.projections import EVENT_COLUMNS, REVOCATION_ROWS, session_ends

# Each event type's own payload fields, read from the payload only for the rows of that type; the log's
# columns (type, occurred_at, user_id, session_id, jti, expires_at) are read as columns. REVOCATION_ROWS
# keeps the revocation types, and its filter is applied in the scan, before these are computed.
_REVOKED_EVENTS = f"""(
    SELECT {EVENT_COLUMNS} FROM (
        SELECT position, type, occurred_at, user_id, session_id, jti, expires_at,
               CASE WHEN type = 'key.revoked' THEN payload->>'kid' END AS kid,
               CASE WHEN type IN ('user.revoked', 'global.revoked')
                    THEN (payload->>'not_before')::timestamptz END AS not_before,
               payload->>'reason' AS reason
        FROM event_log) AS e)"""

REVOCATIONS = REVOCATION_ROWS.format(events=_REVOKED_EVENTS)
REVOCATION_COLUMNS = ["kind", "subject", "not_before", "expires_at", "position"]

# The first session.started of each session opens it; refreshes and ends count after it only. A session's
# refreshes are aggregated without a join: when the first of them follows the start (as in every log the
# service writes) their latest is the answer; otherwise the index on (session_id, position) finds the latest
# one after the start.
SESSIONS = f"""
WITH started AS MATERIALIZED (
    SELECT DISTINCT ON (session_id) session_id, user_id, payload->>'client_id' AS client_id,
           occurred_at AS created_at, payload->>'user_agent' AS user_agent,
           payload->>'client_address' AS client_address, expires_at, position AS start_position
    FROM event_log WHERE type = 'session.started' ORDER BY session_id, position),
later AS MATERIALIZED (
    SELECT position, type, occurred_at, user_id, session_id,
           CASE WHEN type IN ('user.revoked', 'global.revoked')
                THEN (payload->>'not_before')::timestamptz END AS not_before,
           CASE WHEN type <> 'token.issued' THEN payload->>'reason' END AS reason
    FROM event_log
    WHERE type IN ('session.revoked', 'user.revoked', 'global.revoked')
       OR (type = 'token.issued' AND payload->>'cause' = 'refresh')),
refreshed AS (
    SELECT session_id, max(occurred_at) AS last_refreshed_at, min(position) AS first_position
    FROM later WHERE type = 'token.issued' GROUP BY session_id),
globals AS MATERIALIZED (SELECT * FROM later WHERE type = 'global.revoked'),
ended AS ({session_ends("started", "later", "globals")})
SELECT s.session_id, s.user_id, s.client_id, s.created_at,
       CASE WHEN r.first_position IS NULL OR r.first_position > s.start_position THEN r.last_refreshed_at
            ELSE (SELECT max(e.occurred_at) FROM event_log e
                  WHERE e.session_id = s.session_id AND e.position > s.start_position
                    AND e.type = 'token.issued' AND e.payload->>'cause' = 'refresh') END,
       s.user_agent, s.client_address, s.expires_at, x.revoked_at, x.revoked_reason
FROM started s LEFT JOIN refreshed r USING (session_id) LEFT JOIN ended x USING (session_id)"""
SESSION_COLUMNS = [
    "session_id",
    "user_id",
    "client_id",
    "created_at",
    "last_refreshed_at",
    "user_agent",
    "client_address",
    "expires_at",
    "revoked_at",
    "revoked_reason",
]

# Sorts and hashes in memory; no JIT (seconds of compilation for little gain on these expressions); no
# nested loops, which the planner picks between CTEs whose sizes it cannot estimate, and which are quadratic.
_QUERY_SETTINGS = (
    "SELECT set_config('work_mem', '256MB', true), set_config('jit', 'off', true),"
    " set_config('enable_nestloop', 'off', true)"
)
_HEAD = "SELECT coalesce(max(position), 0) FROM event_log"

# Every index of a table, with the constraint it backs (primary key, unique, exclusion) if any.
_INDEXES = """
SELECT i.indexrelid::regclass::text AS index, pg_get_indexdef(i.indexrelid) AS create_index,
       quote_ident(c.conname) AS constraint_name, pg_get_constraintdef(c.oid) AS constraint_def
FROM pg_index i
LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid
                         AND c.contype IN ('p', 'u', 'x')
WHERE i.indrelid = $1::regclass
ORDER BY c.conname IS NULL, i.indexrelid"""


class _Table:
    """A projection table loaded without its indexes: dropped first, built again once its rows are in."""

    def __init__(self, name: str, columns: list[str]) -> None:
        self.name = name
        self.columns = columns
        self._create: list[str] = []

    async def drop_indexes(self, db: Any) -> None:
        for row in await db.fetch(_INDEXES, self.name):
            if row["constraint_name"] is not None:
                await db.execute(f"ALTER TABLE {self.name} DROP CONSTRAINT {row['constraint_name']}")
                self._create.append(
                    f"ALTER TABLE {self.name} ADD CONSTRAINT {row['constraint_name']} {row['constraint_def']}"
                )
            else:
                await db.execute(f"DROP INDEX {row['index']}")
                self._create.append(row["create_index"])

    async def load(self, db: Any, rows: _Stream) -> None:
        if rows.source is db:  # one connection cannot run the query and the load at once
            await asyncio.wait([rows.produced])
        await db.copy_to_table(self.name, source=rows.chunks(), columns=self.columns, format="binary")
        for statement in self._create:
            await db.execute(statement)


async def rebuild(conn: AsyncConnection) -> int:
    """Recompute every projection from the whole log; returns the events in the log.

    The caller holds the append lock (log.Appender.rebuild_projections), so no append interleaves, and the
    rebuilt projections become visible at once when the caller commits. A second connection is taken from
    the caller's engine for the time of the rebuild.
    """
    db = await _driver(conn)
    head = int(await db.fetchval(_HEAD))  # positions are dense from 1: the head is the number of events
    await db.execute("TRUNCATE sessions, revocations")
    await db.execute(_QUERY_SETTINGS)
    await db.execute("SELECT set_config('maintenance_work_mem', '256MB', true)")
    sessions, revocations = _Table("sessions", SESSION_COLUMNS), _Table("revocations", REVOCATION_COLUMNS)
    for table in (sessions, revocations):
        await table.drop_indexes(db)
    async with conn.engine.connect() as other:
        reader = await _driver(other)
        snapshot = reader.transaction(isolation="repeatable_read", readonly=True)
        await snapshot.start()
        await reader.execute(_QUERY_SETTINGS)
        # The reader sees what the caller sees unless the caller appended in its own open transaction.
        alone = int(await reader.fetchval(_HEAD)) != head
        session_rows = _Stream(db if alone else reader, SESSIONS)
        try:
            if alone:  # one connection runs one statement at a time
                await asyncio.wait([session_rows.produced])
            await revocations.load(db, _Stream(db, REVOCATIONS))
            await sessions.load(db, session_rows)
        finally:
            if not session_rows.produced.done():  # the load failed: stop the reader before it is released
                session_rows.produced.cancel()
                await asyncio.wait([session_rows.produced])
            await snapshot.rollback()
    return head


async def _driver(conn: AsyncConnection) -> Any:
    """The asyncpg connection under a SQLAlchemy one, for COPY (which SQLAlchemy does not offer)."""
    return (await conn.get_raw_connection()).driver_connection


class _Stream:
    """The binary COPY output of a query on `source`, produced by a task and read in chunks."""

    def __init__(self, source: Any, query: str) -> None:
        self.source = source
        self._chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.produced = asyncio.ensure_future(self._produce(query))

    async def _produce(self, query: str) -> None:
        try:
            await self.source.copy_from_query(query, output=self._chunks.put, format="binary")
        finally:
            self._chunks.put_nowait(None)

    async def chunks(self) -> AsyncIterator[bytes]:
        while (chunk := await self._chunks.get()) is not None:
            yield chunk
        await self.produced  # raises the query's failure, which ends the COPY into the table with it
