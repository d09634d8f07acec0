"""The gates a log writer batch takes before it writes a row (store.py's lock order): which, for a batch
of intents, and the statements that take them, each after the one before: the whole log's, shared by an
ordinary batch and taken alone by one that touches rows no user's gate covers; then each user's, in key
order, so two batches never wait for each other's gates crosswise."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from auth_service.log.intents import (
    Caller,
    ChangePassword,
    EndSessions,
    Intent,
    Login,
    RevokeKey,
    RevokeToken,
    RevokeUser,
    Rotate,
)
from auth_service.log.store import GLOBAL_GATE_KEY, USER_GATE_CLASS

GLOBAL_GATE = f"SELECT pg_advisory_xact_lock_shared({GLOBAL_GATE_KEY})"
GLOBAL_GATE_ALONE = f"SELECT pg_advisory_xact_lock({GLOBAL_GATE_KEY})"
USER_GATES = f"""
SELECT count(pg_advisory_xact_lock({USER_GATE_CLASS}, g.h))
FROM (SELECT DISTINCT hashtext(u) AS h FROM unnest({{gate_users}}) AS u ORDER BY 1) AS g"""

# The head and the moment (the events' recorded_at), read in a statement that starts once the append lock
# is held (store.py's protocol): the statement-by-statement path's, after its gates and its rows.
HEAD = "SELECT coalesce(max(position), 0), clock_timestamp() FROM event_log"


def gates(requests: Sequence[Sequence[Intent]], callers: Sequence[Caller]) -> dict[str, Any]:
    """The gates a batch takes, as the append function's arguments: the gate of every user its intents or its
    callers touch, and the whole log's alone for a key revocation or a token revocation that names no user
    (whose rows no user's gate covers)."""
    users: dict[str, None] = dict.fromkeys(x.user_id for x in callers)
    alone = False
    for intents in requests:
        for i in intents:
            match i:
                case EndSessions() | RevokeUser() | Rotate() | ChangePassword():
                    users[i.user_id] = None
                case Login():
                    users[i.started.user_id] = None
                case RevokeToken():
                    if i.event.user_id is None:
                        alone = True
                    else:
                        users[i.event.user_id] = None
                case RevokeKey():
                    alone = True
    return {"gate_users": list(users), "gate_alone": alone}
