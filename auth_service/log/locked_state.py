"""What the log writer's locked path reads under the gates before it decides: the keys each intent names (its
sessions, users, refresh tokens, signing keys), gathered for one statement (batch_sql.STATE)."""

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


async def read_locked_state(conn: Any, requests: Sequence[Sequence[Intent]]) -> tuple[LockedState, datetime]:
    """Under the gates: the state the batch's decisions need, in one statement (batch_sql.STATE); and the
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
    row = await conn.fetchrow(
        sql.STATE, list(sids), list(users), list(marked), list(parents), now, list(kids)
    )
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
