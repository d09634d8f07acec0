"""The gates a log writer batch takes before it writes a row (store.py's lock order): which, for a batch of
intents, and the statements that take them, each after the one before. First the whole log's: shared by an
ordinary batch, taken alone by one that touches rows no user's gate covers. Then, in one key order, so two
batches never wait for each other's gates crosswise, each user's and each session's:

- a user's gate is taken shared by a batch that reads or writes some of the user's sessions (a refresh, a
  login, a logout) and alone by one that decides on all of them or on the user's revocations (revoking the
  user, changing the password, revoking one of the user's tokens);
- a session's gate is taken alone by a batch that refreshes or ends that session, or acts with its token.

So two refreshes of one user's different sessions never wait for each other, two of one session do, and
revoking a user waits for every batch on any of the user's sessions. Ids that hash alike share a gate: they
wait for each other, nothing more."""

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
from auth_service.log.store import GLOBAL_GATE_KEY, SESSION_GATE_CLASS, USER_GATE_CLASS

GLOBAL_GATE = f"SELECT pg_advisory_xact_lock_shared({GLOBAL_GATE_KEY})"
GLOBAL_GATE_ALONE = f"SELECT pg_advisory_xact_lock({GLOBAL_GATE_KEY})"
# Each user's gate (shared unless some intent takes it alone), then each session's, in (class, key) order.
GATES = f"""
SELECT count(*)
FROM (SELECT {USER_GATE_CLASS} AS k1, hashtext(u) AS k2, bool_or(a) AS alone
      FROM unnest({{gate_users}}, {{gate_user_alone}}) AS x(u, a) GROUP BY 2
      UNION ALL
      SELECT {SESSION_GATE_CLASS}, hashtext(s), true FROM unnest({{gate_sessions}}) AS s GROUP BY 2
      ORDER BY 1, 2) AS g
CROSS JOIN LATERAL (SELECT pg_advisory_xact_lock(g.k1, g.k2) WHERE g.alone
                    UNION ALL
                    SELECT pg_advisory_xact_lock_shared(g.k1, g.k2) WHERE NOT g.alone) AS l"""


def gates(requests: Sequence[Sequence[Intent]], callers: Sequence[Caller]) -> dict[str, Any]:
    """The gates a batch takes, as the append function's arguments (see the module): its users' (each
    shared or alone), its sessions', and whether it takes the whole log's alone (a key revocation, or a token
    revocation that names no user)."""
    users: dict[str, bool] = {}  # user -> taken alone
    sessions: dict[str, None] = {}
    alone = False

    def user(u: str, *, alone: bool = False) -> None:
        users[u] = users.get(u, False) or alone

    for x in callers:  # a caller's token is checked against its user's, its session's and its own revocations
        user(x.user_id)
        if x.session_id:
            sessions[x.session_id] = None
    for intents in requests:
        for i in intents:
            match i:
                case Rotate():
                    user(i.user_id)
                    sessions[str(i.session_id)] = None
                case EndSessions():
                    user(i.user_id)
                    sessions.update(dict.fromkeys(str(s) for s in i.session_ids))
                case Login():
                    user(i.started.user_id)
                case RevokeUser() | ChangePassword():
                    user(i.user_id, alone=True)
                case RevokeToken():
                    if i.event.user_id is None:
                        alone = True
                    else:
                        user(i.event.user_id, alone=True)
                case RevokeKey():
                    alone = True
    return {
        "gate_users": list(users),
        "gate_user_alone": list(users.values()),
        "gate_sessions": list(sessions),
        "gate_alone": alone,
    }
