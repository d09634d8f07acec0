"""What the log writer's locked path reads under the gates before it decides: the keys each intent names (its
sessions, users, refresh tokens, signing keys), gathered for one statement (STATE)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from auth_service.log import batch_sql as sql
from auth_service.log.intents import (
    ChangePassword,
    EndSessions,
    Intent,
    LockedState,
    Login,
    OpenSession,
    RevokeKey,
    RevokeUser,
    Rotate,
)

# What the decisions read under the gates, in one statement: the open sessions named ($1) or of the users
# named ($2); the watermarks of the users named ($3); each presented refresh token ($4) with its rotated_at
# and, while its window lasts ($5), the answer its rotation kept; each signing key named ($6), retired or
# not, revoked or not.
STATE = f"""
SELECT o.sids, o.users, o.created, o.expires, w.marks,
       t.hashes, t.rotated, t.sealed, k.kids, k.retired, k.revoked
FROM (SELECT array_agg(session_id ORDER BY session_id) AS sids,
             array_agg(user_id ORDER BY session_id) AS users,
             array_agg(created_at ORDER BY session_id) AS created,
             array_agg(expires_at ORDER BY session_id) AS expires
      FROM {sql.open_sessions("unnest($1::uuid[]) AS k(session_id)", "unnest($2::text[]) AS k(user_id)")}
           AS open) AS o,
     (SELECT array_agg({sql.watermark_of("w.u")} ORDER BY n) AS marks
      FROM unnest($3::text[]) WITH ORDINALITY AS w(u, n)) AS w,
     (SELECT array_agg(t.token_hash ORDER BY k.n) AS hashes, array_agg(t.rotated_at ORDER BY k.n) AS rotated,
             array_agg(sc.sealed ORDER BY k.n) AS sealed
      FROM unnest($4::bytea[]) WITH ORDINALITY AS k(token_hash, n)
      CROSS JOIN LATERAL (SELECT token_hash, rotated_at FROM refresh_tokens
                          WHERE token_hash = k.token_hash LIMIT 1) AS t
      LEFT JOIN LATERAL (SELECT sealed FROM refresh_successors
                         WHERE token_hash = k.token_hash AND expires_at >= $5::timestamptz LIMIT 1) AS sc
           ON true) AS t,
     (SELECT array_agg(kid) AS kids, array_agg(retired_at IS NOT NULL) AS retired,
             array_agg(revoked_at IS NOT NULL) AS revoked
      FROM signing_keys WHERE kid = ANY($6::text[])) AS k
"""


async def read_locked_state(conn: Any, requests: Sequence[Sequence[Intent]]) -> tuple[LockedState, datetime]:
    """Under the gates: the state the batch's decisions need, in one statement (STATE); and the
    `now` they are decided at."""
    sids: dict[uuid.UUID, None] = {}
    users: dict[str, None] = {}  # whose open sessions the decisions need, all of them
    marked: dict[str, None] = {}  # whose watermarks they need
    parents: dict[bytes, None] = {}
    kids: dict[str, None] = {}
    for intents in requests:
        for i in intents:
            match i:
                case EndSessions():
                    sids.update(dict.fromkeys(i.session_ids))
                case Rotate():
                    sids[i.session_id] = None
                    parents[i.parent_hash] = None
                    marked[i.user_id] = None
                case RevokeUser():
                    users[i.user_id] = None
                    marked[i.user_id] = None
                case ChangePassword():
                    users[i.user_id] = None
                case Login():
                    marked[i.started.user_id] = None
                case RevokeKey():
                    kids[i.kid] = None
    now = datetime.now(UTC)
    row = await conn.fetchrow(STATE, list(sids), list(users), list(marked), list(parents), now, list(kids))
    open_sids, open_users, created, expires, marks, hashes, rotated, sealed = row[:8]
    found, retired, revoked = row[8:]
    state = LockedState(
        open_sessions={
            sid: OpenSession(user, at, until)
            for sid, user, at, until in zip(
                open_sids or [], open_users or [], created or [], expires or [], strict=True
            )
        },
        watermarks=dict(zip(marked, marks or [], strict=True)),
        refresh_tokens=dict(zip(hashes or [], rotated or [], strict=True)),
        sealed={h: s for h, s in zip(hashes or [], sealed or [], strict=True) if s is not None},
        keys={
            kid: (was_retired, was_revoked)
            for kid, was_retired, was_revoked in zip(found or [], retired or [], revoked or [], strict=True)
        },
    )
    return state, now
