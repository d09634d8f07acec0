"""The one-round-trip path of the log writer: the guess a batch is decided on, and the append function that
checks it under the gates and writes, BEGIN to COMMIT, in one statement (batch.py says when each path runs).

The guess: every session the batch ends or refreshes is still open and every refresh token it presents
unrotated (the requests read them moments ago), no login's prepared token is below its user's watermark,
and no caller's token is revoked. Decided on that, the batch's writes are known before the lock is taken.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from auth_service.log import batch_sql as sql
from auth_service.log import gates as gating
from auth_service.log.intents import EndSessions, Intent, LockedState, Login, OpenSession, Rotate
from auth_service.log.store import APPEND_LOCK_KEY, GLOBAL_GATE_KEY, NOTIFY_CHANNEL

# A guess decides on which sessions are open, never on their user, creation or expiry: only a batch with a
# watermark or a password change asks those, and it takes the locked path.
_UNUSED = datetime.min.replace(tzinfo=UTC)


def guess(requests: Sequence[Sequence[Intent]]) -> tuple[LockedState, dict[str, list[Any]]]:
    """The state the one-round-trip path decides on, and the arrays the append function checks it with."""
    open_sids: dict[uuid.UUID, None] = {}
    unrotated: dict[bytes, None] = {}
    tokens: dict[bytes, datetime | None] = {}
    users: list[str] = []
    iats: list[int] = []
    for intents in requests:
        for i in intents:
            match i:
                case EndSessions():
                    open_sids.update(dict.fromkeys(i.session_ids))
                case Rotate():
                    open_sids[i.session_id] = None
                    if i.successor is None:  # seen rotated long ago: a reuse, whatever else happened since
                        tokens[i.parent_hash] = _UNUSED
                    else:
                        unrotated[i.parent_hash] = None
                        tokens.setdefault(i.parent_hash, None)
                case Login():
                    users.append(i.started.user_id)
                    iats.append(int(i.issued.issued_at.timestamp()))
    state = LockedState(
        open_sessions={sid: OpenSession("", _UNUSED, _UNUSED) for sid in open_sids},
        watermarks={},
        refresh_tokens=tokens,
    )
    checks: dict[str, list[Any]] = {
        "guess_open": list(open_sids),
        "guess_unrotated": list(unrotated),
        "guess_users": users,
        "guess_iats": iats,
    }
    return state, checks


# The one-round-trip path's guess, checked under the lock (each count a probe per key named): every session
# named is open, every refresh token presented is unrotated, no login's token is below its user's watermark.
# Each holds the statement ready for the plan tests as well.
GUESS_OPEN = """
SELECT count(*) FROM unnest({guess_open}) AS k(session_id)
CROSS JOIN LATERAL (SELECT 1 FROM sessions
                    WHERE session_id = k.session_id AND revoked_at IS NULL LIMIT 1) AS s"""
GUESS_UNROTATED = """
SELECT count(*) FROM unnest({guess_unrotated}) AS k(token_hash)
CROSS JOIN LATERAL (SELECT 1 FROM refresh_tokens
                    WHERE token_hash = k.token_hash AND rotated_at IS NULL LIMIT 1) AS t"""
GUESS_BORN_REVOKED = f"""
SELECT 1 FROM unnest({{guess_users}}, {{guess_iats}}) AS q(u, iat)
WHERE q.iat < extract(epoch FROM {sql.watermark_of("q.u")})"""


def _in_function(template: str) -> str:
    return template.format(**{name: f"a_{name}" for name in sql.ARG_TYPES})


# The append function, one round trip for a batch whose decisions need no more than its guess (logouts,
# RFC 7009, ending a session, logins, refreshes): run as one statement with no transaction around it, it is a
# transaction of its own, so BEGIN, the locks, the writes and COMMIT cost one round trip instead of many.
# The decisions were made before it, on the guess. It takes the gates (store.py's lock order), checks the
# guess, and writes only if it held (no row back if not: the writer decides again on the locked path, where
# it finds out which). It writes the rows of the batch's users under their gates, then takes the append lock
# and writes what carries a position: the head, the events, the revocations. PL/pgSQL runs each statement of
# a VOLATILE function in a snapshot of its own, taken when the statement starts (READ COMMITTED), so each
# check sees what the gates' holders before it committed, the head is read after the lock is held (store.py's
# protocol), and each write sees the one before. It answers the head it appended after, the events'
# recorded_at, how long it held the append lock (to its last statement: the COMMIT's flush follows) and how
# long it waited for it. The locked path calls it too, with no guess and no callers (it checked them), inside
# its own transaction. It lives in pg_temp, made on each of the writer's connections: the one definition
# stays here.
_FUNCTION_ARGS = [name for name in sql.ARG_TYPES if name not in ("base", "recorded")]


def _writes(statements: Sequence[sql.Statement]) -> str:
    # Each write only when it has something to do: a batch of refreshes runs neither the revocations nor the
    # session ends, so the lock is held for what the batch writes, not for every kind of write there is.
    return "\n    ".join(
        f"IF {_in_function(w.guard)} THEN\n        {_in_function(w.template)};\n    END IF;"
        for w in statements
    )


APPEND_FUNCTION = f"""
CREATE FUNCTION pg_temp.tokenlife_append(
    {", ".join(f"a_{name} {sql.ARG_TYPES[name]}" for name in _FUNCTION_ARGS)}, a_lock_timeout_ms integer)
RETURNS TABLE (o_after bigint, o_recorded timestamptz, o_lock_held float8, o_lock_wait float8)
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    a_base bigint;
    a_recorded timestamptz;
    v_locked timestamptz;
    v_asked timestamptz;
BEGIN
    PERFORM set_config('lock_timeout', a_lock_timeout_ms::text, true);
    IF a_gate_alone THEN
        PERFORM pg_advisory_xact_lock({GLOBAL_GATE_KEY});
    ELSE
        PERFORM pg_advisory_xact_lock_shared({GLOBAL_GATE_KEY});
    END IF;
    IF cardinality(a_gate_users) + cardinality(a_gate_sessions) > 0 THEN
        PERFORM ({_in_function(gating.GATES)});
    END IF;
    IF cardinality(a_guess_open) > 0
       AND ({_in_function(GUESS_OPEN)}) <> cardinality(a_guess_open) THEN
        RETURN;
    END IF;
    IF cardinality(a_guess_unrotated) > 0
       AND ({_in_function(GUESS_UNROTATED)}) <> cardinality(a_guess_unrotated) THEN
        RETURN;
    END IF;
    IF cardinality(a_guess_users) > 0 AND EXISTS ({_in_function(GUESS_BORN_REVOKED)}) THEN
        RETURN;
    END IF;
    IF cardinality(a_c_jtis) > 0 AND EXISTS ({_in_function(sql.REVOKED_CALLERS)}) THEN
        RETURN;
    END IF;
    {_writes(sql.BEFORE_LOCK)}
    v_asked := clock_timestamp();
    PERFORM pg_advisory_xact_lock({APPEND_LOCK_KEY});
    v_locked := clock_timestamp();
    SELECT coalesce(max(position), 0) INTO a_base FROM event_log;
    a_recorded := clock_timestamp();
    {_writes(sql.UNDER_LOCK)}
    IF cardinality(a_types) > 0 THEN  -- a batch of checks alone appends nothing: nothing to tell
        PERFORM pg_notify('{NOTIFY_CHANNEL}', (a_base + cardinality(a_types))::text);
    END IF;
    RETURN QUERY SELECT a_base, a_recorded, extract(epoch FROM clock_timestamp() - v_locked)::float8,
                        extract(epoch FROM v_locked - v_asked)::float8;
END
$fn$
"""
APPEND = "SELECT * FROM pg_temp.tokenlife_append({})".format(
    ", ".join(f"${i}" for i in range(1, len(_FUNCTION_ARGS) + 2))
)


def function_values(values: dict[str, Any]) -> list[Any]:
    """The append function's arguments, from the batch's values by name (its lock timeout last, apart)."""
    return [values[name] for name in _FUNCTION_ARGS]
