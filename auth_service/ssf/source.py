"""The log, read for the transmitter: the events after a stream's cursor as the SETs they become.

One read per batch on an asyncpg connection; the payload is fetched only for the types that become SETs
(events.py's map), so the token.issued rows of a busy log cost a position each and no JSON. What a
watermark (user.revoked, global.revoked) ended is asked of the log itself, as of the event's position:
every session started before it and before its not_before, whose refresh token had not expired by then,
and that no earlier event had ended (a session.revoked, or a watermark appended after it that covered it).
That is the projection's rule (log/projections.py), read back at one position, so asking again later, for
a receiver that fell behind, gives the same answer.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from auth_service import contract as c
from auth_service.log.projections import decode_row
from auth_service.ssf.events import SetBody, needs_ended_sessions, set_bodies

_TYPES = [
    c.EventType.SESSION_REVOKED.value,
    c.EventType.USER_REVOKED.value,
    c.EventType.GLOBAL_REVOKED.value,
    c.EventType.CREDENTIAL_CHANGED.value,
    c.EventType.SSF_VERIFICATION.value,
    c.EventType.SSF_STREAM_UPDATED.value,
]
_READ = """
SELECT position, CASE WHEN type = ANY($3::text[]) THEN payload::text END, recorded_at
FROM event_log WHERE position > $1 ORDER BY position LIMIT $2
"""
# $1 position, $2 not_before, $3 the event's time, $4 the user (NULL: every user, a global watermark).
_ENDED = """
SELECT s.user_id, s.session_id FROM event_log s
WHERE s.type = 'session.started' AND s.position < $1 AND ($4::text IS NULL OR s.user_id = $4)
  AND s.occurred_at < $2 AND s.expires_at > $3
  AND NOT EXISTS (
    SELECT 1 FROM event_log e
    WHERE e.session_id = s.session_id AND e.type = 'session.revoked' AND e.position < $1)
  AND NOT EXISTS (
    SELECT 1 FROM event_log w
    WHERE w.position > s.position AND w.position < $1
      AND ((w.type = 'user.revoked' AND w.user_id = s.user_id) OR w.type = 'global.revoked')
      AND (w.payload->>'not_before')::timestamptz > s.occurred_at)
ORDER BY s.position
"""
_HEAD = "SELECT coalesce(max(position), 0) FROM event_log"


@dataclass(frozen=True)
class Entry:
    """One log position and the SETs it becomes (none for most), with when it was committed."""

    position: int
    bodies: list[SetBody]
    recorded_at: datetime


async def ended_sessions(
    conn: Any, event: c.UserRevoked | c.GlobalRevoked
) -> tuple[tuple[str, uuid.UUID], ...]:
    """The (user, session) pairs a watermark ended, as of its position."""
    user = event.user_id if isinstance(event, c.UserRevoked) else None
    rows = await conn.fetch(_ENDED, event.position, event.not_before, event.occurred_at, user)
    return tuple((str(r[0]), r[1]) for r in rows)


async def read_entries(conn: Any, issuer: str, after: int, limit: int) -> list[Entry]:
    """The positions after `after` (at most `limit`), each with its SETs, in log order."""
    rows = await conn.fetch(_READ, after, limit, _TYPES)
    entries = []
    for position, payload, recorded_at in rows:
        bodies: list[SetBody] = []
        if payload is not None:
            event = decode_row(int(position), json.loads(payload))
            ended: tuple[tuple[str, uuid.UUID], ...] = ()
            if needs_ended_sessions(event):
                assert isinstance(event, c.UserRevoked | c.GlobalRevoked)
                ended = await ended_sessions(conn, event)
            bodies = set_bodies(issuer, event, ended)
        entries.append(Entry(int(position), bodies, recorded_at))
    return entries


async def read_head(conn: Any) -> int:
    """The log's last position."""
    return int(await conn.fetchval(_HEAD))
