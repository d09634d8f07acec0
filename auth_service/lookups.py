"""The hot path's reads, on the raw asyncpg pool with prepared statements: the revocation check of every
authenticated request, and the lookups a revocation makes before it is queued for the log writer.

Why not SQLAlchemy Core here (queries.py has the same questions for the other paths): building, coercing and
compiling a Core statement costs more CPU than the query itself on these paths (about half of a logout's CPU,
profiled), while asyncpg prepares each statement once per connection and only binds values after that.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from auth_service import contract as c
from auth_service.lifetimes import may_hold_live_access_token

_REVOCATION_ROWS = """
SELECT kind, subject, not_before FROM revocations
WHERE (kind, subject) IN (('jti', $1), ('session', $2), ('user', $3), ('key', $4), ('global', $5))
"""
_UNREVOKED_SESSIONS = """
SELECT session_id, expires_at FROM sessions WHERE user_id = $1 AND revoked_at IS NULL ORDER BY created_at
"""
_SESSION = "SELECT user_id, revoked_at FROM sessions WHERE session_id = $1"
_SESSION_OF_REFRESH_TOKEN = """
SELECT s.session_id, s.user_id, s.revoked_at
FROM refresh_tokens t JOIN sessions s ON s.session_id = t.session_id WHERE t.token_hash = $1
"""


async def keep_session_state(_conn: Any) -> None:
    """The pool's reset between uses: nothing, as these reads set no session state (saves a round trip)."""


async def revocation_rows(
    pg: Any, jti: str, session_id: uuid.UUID, user_id: str, kid: str
) -> list[tuple[str, str, datetime | None]]:
    """The revocation rows that could name this token: (kind, subject, not_before)."""
    async with pg.acquire() as conn:
        rows = await conn.fetch(_REVOCATION_ROWS, jti, str(session_id), user_id, kid, c.GLOBAL_SUBJECT)
    return [(r[0], r[1], r[2]) for r in rows]


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
) -> tuple[uuid.UUID, str, datetime | None] | None:
    """The (session_id, user_id, revoked_at) a refresh token belongs to, or None."""
    async with pg.acquire() as conn:
        row = await conn.fetchrow(_SESSION_OF_REFRESH_TOKEN, token_hash)
    return None if row is None else (row[0], row[1], row[2])
