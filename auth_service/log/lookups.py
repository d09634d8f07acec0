"""The hot path's reads, on the raw asyncpg pool with prepared statements: the revocation check of every
authenticated request, and the lookups a revocation makes before it is queued for the log writer.

Why not SQLAlchemy Core here (queries.py has the same questions for the other paths): building, coercing and
compiling a Core statement costs more CPU than the query itself on these paths (about half of a logout's CPU,
profiled), while asyncpg prepares each statement once per connection and only binds values after that.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Any

from auth_service import contract as c
from auth_service.log.lifetimes import may_hold_live_access_token

# The batched form: one row per (request, kind, subject) the client expands, each probed on the primary key
# (a LATERAL subquery with LIMIT, which the planner cannot turn into a join over the whole table: see
# batch_sql.py and tests/integration/test_query_plans.py).
REVOCATION_ROWS_BATCH = """
SELECT q.i, q.kind, q.subject, r.not_before
FROM unnest($1::int[], $2::text[], $3::text[]) AS q(i, kind, subject)
CROSS JOIN LATERAL (SELECT not_before FROM revocations
                    WHERE kind = q.kind AND subject = q.subject LIMIT 1) AS r
"""
MAX_BATCH = 256
_UNREVOKED_SESSIONS = """
SELECT session_id, expires_at FROM sessions WHERE user_id = $1 AND revoked_at IS NULL ORDER BY created_at
"""
_SESSION = "SELECT user_id, revoked_at FROM sessions WHERE session_id = $1"
# A user's latest watermark (theirs or the global one), each by primary key.
_WATERMARK = f"""
SELECT max(not_before) FROM revocations
WHERE (kind = 'user' AND subject = $1) OR (kind = 'global' AND subject = '{c.GLOBAL_SUBJECT}')
"""
# What a refresh decides on before it is queued: the token, its session, its user and the user's watermark,
# each probed by primary key (LATERAL with LIMIT: never a join over a whole table).
_REFRESH_STATE = f"""
SELECT t.session_id, t.generation, t.expires_at, t.rotated_at, s.user_id, s.client_id, s.revoked_at,
       u.disabled, u.scopes,
       (SELECT max(r.not_before) FROM revocations r
        WHERE (r.kind = 'user' AND r.subject = s.user_id)
           OR (r.kind = 'global' AND r.subject = '{c.GLOBAL_SUBJECT}')) AS watermark
FROM (SELECT session_id, generation, expires_at, rotated_at FROM refresh_tokens
      WHERE token_hash = $1 LIMIT 1) AS t
CROSS JOIN LATERAL (SELECT user_id, client_id, revoked_at FROM sessions
                    WHERE session_id = t.session_id LIMIT 1) AS s
LEFT JOIN LATERAL (SELECT disabled, scopes FROM users WHERE user_id = s.user_id::uuid LIMIT 1) AS u ON true
"""
# What a login decides on before it is queued, in one round trip: the user by email (a unique index), the
# failures on record for its throttle keys (primary key), and the user's watermark. One row always: the
# failures' arrays are NULL when there are none, the user's columns when there is no such user.
_LOGIN_STATE = f"""
SELECT u.user_id, u.password_hash, u.disabled, u.scopes,
       (SELECT max(r.not_before) FROM revocations r
        WHERE (r.kind = 'user' AND r.subject = u.user_id::text)
           OR (r.kind = 'global' AND r.subject = '{c.GLOBAL_SUBJECT}')) AS watermark,
       f.keys, f.failures, f.first_at, f.last_at
FROM (SELECT array_agg(key) AS keys, array_agg(failures) AS failures, array_agg(first_at) AS first_at,
             array_agg(last_at) AS last_at
      FROM login_failures WHERE key = ANY($2::text[])) AS f
LEFT JOIN LATERAL (SELECT user_id, password_hash, disabled, scopes FROM users WHERE email = $1 LIMIT 1) AS u
       ON true
"""
# The answer a rotation kept for a repeat within its grace window.
_KEPT_ANSWER = "SELECT sealed FROM refresh_successors WHERE token_hash = $1 AND expires_at >= $2"
_SESSION_OF_REFRESH_TOKEN = """
SELECT s.session_id, s.user_id, s.revoked_at, s.client_id
FROM refresh_tokens t JOIN sessions s ON s.session_id = t.session_id WHERE t.token_hash = $1
"""


async def keep_session_state(_conn: Any) -> None:
    """The pool's reset between uses: nothing, as these reads set no session state (saves a round trip)."""


Rows = list[tuple[str, str, datetime | None]]


class RevocationReads:
    """Every authenticated request's revocation check, batched: the checks that queue while one query runs
    go together in the next, one round trip for all of them (the same idea as the log writer's group commit).

    A lone request waits for nothing: with no query running, its own starts at once. Under load the per-check
    cost falls to a share of one query, which is most of what a round trip costs the auth process.
    """

    def __init__(self, pg: Any) -> None:
        self._pg = pg
        self._queue: list[tuple[tuple[str, str, str, str], asyncio.Future[Rows]]] = []
        self._task: asyncio.Task[None] | None = None

    async def rows(self, jti: str, session_id: uuid.UUID, user_id: str, kid: str) -> Rows:
        """The revocation rows that could name this token: (kind, subject, not_before)."""
        future: asyncio.Future[Rows] = asyncio.get_running_loop().create_future()
        self._queue.append(((jti, str(session_id), user_id, kid), future))
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name="tokenlife-revocation-reads")
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                try:
                    found = await self._fetch([subjects for subjects, _ in batch])
                except Exception as exc:  # every waiter gets the failure; the next batch tries again
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), rows in zip(batch, found, strict=True):
                    if not future.done():  # its request may have gone
                        future.set_result(rows)
        finally:
            self._task = None

    async def _fetch(self, requests: list[tuple[str, str, str, str]]) -> list[Rows]:
        numbers: list[int] = []
        kinds: list[str] = []
        subjects: list[str] = []
        for i, (jti, session_id, user_id, kid) in enumerate(requests):
            numbers += (i, i, i, i, i)
            kinds += ("jti", "session", "user", "key", "global")
            subjects += (jti, session_id, user_id, kid, c.GLOBAL_SUBJECT)
        async with self._pg.acquire() as conn:
            records = await conn.fetch(REVOCATION_ROWS_BATCH, numbers, kinds, subjects)
        found: list[Rows] = [[] for _ in requests]
        for r in records:
            found[r[0]].append((r[1], r[2], r[3]))
        return found


async def unrevoked_sessions(pg: Any, user_id: str, now: datetime, access_token_ttl: int) -> list[uuid.UUID]:
    """The user's sessions not yet revoked that may still hold a live access token, oldest first."""
    async with pg.acquire() as conn:
        rows = await conn.fetch(_UNREVOKED_SESSIONS, user_id)
    return [r[0] for r in rows if may_hold_live_access_token(r[1], now, access_token_ttl)]


async def session_owner(pg: Any, session_id: uuid.UUID) -> tuple[str, datetime | None] | None:
    """A session's (user_id, revoked_at), or None."""
    async with pg.acquire() as conn:
        row = await conn.fetchrow(_SESSION, session_id)
    return None if row is None else (row[0], row[1])


async def session_of_refresh_token(
    pg: Any, token_hash: bytes
) -> tuple[uuid.UUID, str, datetime | None, str] | None:
    """The (session_id, user_id, revoked_at, client_id) a refresh token belongs to, or None."""
    async with pg.acquire() as conn:
        row = await conn.fetchrow(_SESSION_OF_REFRESH_TOKEN, token_hash)
    return None if row is None else (row[0], row[1], row[2], row[3])


async def watermark(pg: Any, user_id: str) -> datetime | None:
    """The latest not-before watermark that applies to the user (theirs or the global one)."""
    async with pg.acquire() as conn:
        found: datetime | None = await conn.fetchval(_WATERMARK, user_id)
    return found


async def refresh_state(pg: Any, token_hash: bytes) -> Any | None:
    """A refresh token with its session, user and the user's watermark (a record), or None if unknown."""
    async with pg.acquire() as conn:
        return await conn.fetchrow(_REFRESH_STATE, token_hash)


async def login_state(pg: Any, email: str, throttle_keys: list[str]) -> Any:
    """The user with this email (its columns None when there is none), its watermark, and the failures on
    record for the throttle's keys, as arrays (None when there are none): one record."""
    async with pg.acquire() as conn:
        return await conn.fetchrow(_LOGIN_STATE, email, throttle_keys)


async def kept_answer(pg: Any, token_hash: bytes, now: datetime) -> bytes | None:
    """The sealed answer the rotation of this token kept, while its grace window lasts."""
    async with pg.acquire() as conn:
        sealed: bytes | None = await conn.fetchval(_KEPT_ANSWER, token_hash, now)
    return sealed
