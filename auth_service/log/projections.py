"""Projections of the log: sessions and live revocations.

`project()` is the single definition of how an event changes the projections. The log calls it inside the
appending transaction, and again for every event of the log when it rebuilds them, so the two paths cannot
drift apart. Every rule is idempotent and order-tolerant where it can be (GREATEST, COALESCE), so
replaying an event twice leaves the projections as they were.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from auth_service import contract as c
from auth_service.db.tables import revocations, sessions
from auth_service.log.lifetimes import REVOCATION_RETENTION


def decode_row(position: int, payload: dict[str, Any]) -> c.Event | c.UnknownEvent:
    """Decode a stored payload; the position columns are the truth for position and prev_position."""
    event = c.decode(payload)
    return event.model_copy(update={"position": position, "prev_position": position - 1})


async def project(conn: AsyncConnection, event: c.Event | c.UnknownEvent) -> None:
    """Apply one positioned event to the projections, in the caller's transaction."""
    assert event.position is not None, "only appended events are projected"
    match event:
        case c.SessionStarted():
            await conn.execute(
                insert(sessions)
                .values(
                    session_id=event.session_id,
                    user_id=event.user_id,
                    client_id=event.client_id,
                    created_at=event.occurred_at,
                    user_agent=event.user_agent,
                    client_address=event.client_address,
                    expires_at=event.expires_at,
                )
                .on_conflict_do_nothing(index_elements=[sessions.c.session_id])
            )
        case c.TokenIssued(cause="refresh"):
            await conn.execute(
                update(sessions)
                .where(sessions.c.session_id == event.session_id)
                .values(last_refreshed_at=func.greatest(sessions.c.last_refreshed_at, event.occurred_at))
            )
        case c.TokenRevoked():
            await _revoke(conn, c.RevocationKind.JTI, event.jti, event.expires_at, event.position)
        case c.SessionRevoked():
            await _revoke(
                conn, c.RevocationKind.SESSION, str(event.session_id), event.expires_at, event.position
            )
            await _mark_sessions(conn, event, sessions.c.session_id == event.session_id)
        case c.UserRevoked():
            await _revoke(
                conn, c.RevocationKind.USER, event.user_id, event.expires_at, event.position, event.not_before
            )
            # Logout everywhere also ends every refresh-token family started before the watermark.
            await _mark_sessions(
                conn,
                event,
                (sessions.c.user_id == event.user_id) & (sessions.c.created_at < event.not_before),
            )
        case c.KeyRevoked():
            await _revoke(conn, c.RevocationKind.KEY, event.kid, event.expires_at, event.position)
        case c.GlobalRevoked():
            await _revoke(
                conn,
                c.RevocationKind.GLOBAL,
                c.GLOBAL_SUBJECT,
                event.expires_at,
                event.position,
                event.not_before,
            )
            await _mark_sessions(conn, event, sessions.c.created_at < event.not_before)
        case _:
            pass  # token.issued at login, and types this code does not know: nothing to project


async def _revoke(
    conn: AsyncConnection,
    kind: c.RevocationKind,
    subject: str,
    expires_at: datetime,
    position: int,
    not_before: datetime | None = None,
) -> None:
    stmt = insert(revocations).values(
        kind=kind.value, subject=subject, not_before=not_before, expires_at=expires_at, position=position
    )
    await conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[revocations.c.kind, revocations.c.subject],
            set_={
                "not_before": func.greatest(revocations.c.not_before, stmt.excluded.not_before),
                "expires_at": func.greatest(revocations.c.expires_at, stmt.excluded.expires_at),
                "position": func.greatest(revocations.c.position, stmt.excluded.position),
            },
        )
    )


async def _mark_sessions(
    conn: AsyncConnection, event: c.SessionRevoked | c.UserRevoked | c.GlobalRevoked, where: object
) -> None:
    await conn.execute(
        update(sessions)
        .where(where)  # type: ignore[arg-type]
        .where(sessions.c.revoked_at.is_(None))
        .values(revoked_at=event.occurred_at, revoked_reason=event.reason)
    )


async def prune(conn: AsyncConnection, now: datetime, leeway: timedelta = REVOCATION_RETENTION) -> int:
    """Delete revocations whose every covered token has expired; returns how many went."""
    result = await conn.execute(delete(revocations).where(revocations.c.expires_at < now - leeway))
    return result.rowcount


# The same rules, set-based: what `project()` does event by event, as SQL over many events at once. Used by
# the group committer (log_writer: one batch of revocations) and by rebuild.py (the whole log). The hypothesis
# test tests/integration/test_rebuild.py proves the set form equals the event-by-event one.
#
# `{events}` is a relation (a table name or a parenthesised query) with the columns of EVENT_COLUMNS.
EVENT_COLUMNS = "position, type, occurred_at, user_id, session_id, jti, kid, not_before, expires_at, reason"
# One row per (kind, subject): the GREATEST of every revocation of it, as repeated upserts would leave it.
REVOCATION_ROWS = f"""
SELECT kind, subject, max(not_before) AS not_before, max(expires_at) AS expires_at, max(position) AS position
FROM (SELECT CASE type WHEN 'token.revoked' THEN 'jti' WHEN 'session.revoked' THEN 'session'
                       WHEN 'user.revoked' THEN 'user' WHEN 'key.revoked' THEN 'key'
                       ELSE 'global' END AS kind,
             CASE type WHEN 'token.revoked' THEN jti WHEN 'session.revoked' THEN session_id::text
                       WHEN 'user.revoked' THEN user_id WHEN 'key.revoked' THEN kid
                       ELSE '{c.GLOBAL_SUBJECT}' END AS subject,
             CASE WHEN type IN ('user.revoked', 'global.revoked') THEN not_before END AS not_before,
             expires_at, position
      FROM {{events}} AS e
      WHERE type IN ('token.revoked', 'session.revoked', 'user.revoked', 'key.revoked', 'global.revoked')) r
GROUP BY kind, subject"""


def session_ends(open_: str, events: str, globals_: str | None) -> str:
    """For each open session of `open_` (session_id, user_id, created_at, start_position), the first event
    after its start that ends it: its session.revoked or a watermark of its user in `events`, or a global
    watermark in `globals_` past its creation (None: the events hold no global.revoked).

    The global events come as a relation of their own: they join every session (no equality to hash on),
    so the planner must find them in a small relation, not by filtering the whole log for each session."""
    branches = [
        f"""SELECT o.session_id, e.position, e.occurred_at, e.reason
        FROM {open_} AS o JOIN {events} AS e ON e.session_id = o.session_id
        WHERE e.type = 'session.revoked' AND e.position > o.start_position""",
        f"""SELECT o.session_id, e.position, e.occurred_at, e.reason
        FROM {open_} AS o JOIN {events} AS e ON e.user_id = o.user_id
        WHERE e.type = 'user.revoked' AND o.created_at < e.not_before AND e.position > o.start_position""",
    ]
    if globals_ is not None:
        branches.append(
            f"""SELECT o.session_id, e.position, e.occurred_at, e.reason
        FROM {open_} AS o JOIN {globals_} AS e ON o.created_at < e.not_before
        WHERE e.type = 'global.revoked' AND e.position > o.start_position"""
        )
    return f"""
SELECT DISTINCT ON (session_id) session_id, occurred_at AS revoked_at, reason AS revoked_reason
FROM ({" UNION ALL ".join(branches)}) AS ending
ORDER BY session_id, position"""
