"""Read-only queries of the projections and the log that more than one caller needs: sessions, watermarks,
refresh tokens, a session's timeline. No writes here: those go through the log writer. A question the hot
path also asks (a user's unrevoked sessions, a session's owner) is asked once, in lookups.py, on the pool."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from auth_service import contract as c
from auth_service.db.tables import event_log, refresh_tokens, sessions
from auth_service.log.projections import decode_row

MAX_TIMELINE = 1000


async def live_sessions(conn: AsyncConnection, user_id: str, now: datetime) -> list[Any]:
    """The user's sessions that are neither revoked nor expired, oldest first."""
    rows = await conn.execute(
        select(sessions)
        .where(sessions.c.user_id == user_id, sessions.c.revoked_at.is_(None))
        .where(sessions.c.expires_at > now)
        .order_by(sessions.c.created_at)
    )
    return list(rows)


async def session(conn: AsyncConnection, session_id: uuid.UUID, *, for_update: bool = False) -> Any | None:
    """One session's row, or None."""
    query = select(sessions).where(sessions.c.session_id == session_id)
    return (await conn.execute(query.with_for_update() if for_update else query)).one_or_none()


async def session_timeline(conn: AsyncConnection, session_id: uuid.UUID) -> list[c.Event | c.UnknownEvent]:
    """Every logged event of a session, in position order (at most MAX_TIMELINE)."""
    rows = await conn.execute(
        select(event_log.c.position, event_log.c.payload)
        .where(event_log.c.session_id == session_id)
        .order_by(event_log.c.position)
        .limit(MAX_TIMELINE)
    )
    return [decode_row(r.position, r.payload) for r in rows]


async def refresh_token_with_session(conn: AsyncConnection, token_hash: bytes) -> Any | None:
    """A refresh token's row joined with its session's user, client and revocation, or None."""
    return (
        await conn.execute(
            select(refresh_tokens, sessions.c.user_id, sessions.c.client_id, sessions.c.revoked_at)
            .join(sessions, sessions.c.session_id == refresh_tokens.c.session_id)
            .where(refresh_tokens.c.token_hash == token_hash)
        )
    ).one_or_none()
