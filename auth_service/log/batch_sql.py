"""The log writer's statements (writer.py): the state its decisions read under the lock, the batch's
write, the callers' revocation check, and the append function that runs the last two in one round trip.

The write and the check are written once, with named arguments: `numbered` makes each a prepared statement
for the locked path, and the append function runs the same text over its own arguments.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from auth_service import contract as c
from auth_service.log.intents import Caller
from auth_service.log.projections import REVOCATION_ROWS, session_ends
from auth_service.log.store import APPEND_LOCK_KEY, NOTIFY_CHANNEL

# Every probe of sessions and revocations in these statements is a LATERAL subquery with LIMIT or OFFSET 0,
# which the planner cannot merge into a join: it stays one index probe per key named, at any table size. A
# plain join was planned as a hash join over the whole table when the plan was made on a near-empty table
# and then kept (PL/pgSQL and prepared statements keep their generic plans), and a batch took 7 ms at
# 28,000 live revocations. tests/integration/test_query_plans.py holds every statement to index probes.


def _open_sessions(session_ids: str, user_ids: str) -> str:
    """The open sessions (session_id, user_id, created_at, start_position 0) named by `session_ids` (a
    relation with a session_id column) or owned by a user of `user_ids` (one with a user_id column), each
    probed by index."""
    return f"""(
    SELECT s.session_id, s.user_id, s.created_at, 0 AS start_position
    FROM {session_ids}
    CROSS JOIN LATERAL (SELECT session_id, user_id, created_at FROM sessions
                        WHERE session_id = k.session_id AND revoked_at IS NULL LIMIT 1) AS s
    UNION
    SELECT s.session_id, s.user_id, s.created_at, 0 AS start_position
    FROM {user_ids}
    CROSS JOIN LATERAL (SELECT session_id, user_id, created_at FROM sessions
                        WHERE user_id = k.user_id AND revoked_at IS NULL OFFSET 0) AS s)"""


STATE = f"""
SELECT h.head, o.sids, o.users, o.created, w.marks
FROM (SELECT coalesce(max(position), 0) AS head FROM event_log) AS h,
     (SELECT array_agg(session_id ORDER BY session_id) AS sids,
             array_agg(user_id ORDER BY session_id) AS users,
             array_agg(created_at ORDER BY session_id) AS created
      FROM {_open_sessions("unnest($1::uuid[]) AS k(session_id)", "unnest($2::text[]) AS k(user_id)")}
           AS open) AS o,
     (SELECT array_agg((SELECT max(r.not_before) FROM revocations r
                        WHERE (r.kind = 'user' AND r.subject = u) OR (r.kind = 'global' AND r.subject = $3))
                       ORDER BY n) AS marks
      FROM unnest($2::text[]) WITH ORDINALITY AS w(u, n)) AS w
"""

# The write, over the batch's events as arrays (one per column) and `base`, the position before the first of
# them: the events, the projections set-wise (projections.REVOCATION_ROWS, session_ends), and the events'
# recorded_at, one clock_timestamp() for the statement, taken under the lock (not now(), the transaction's
# start, before the lock wait). Written once with named arguments: `numbered` makes it a
# prepared statement ($1, $2, ...), and the append function (below) runs it over its own arguments.
ARGS = (
    ("base", "bigint"),
    ("types", "text[]"),
    ("occurred", "timestamptz[]"),
    ("user_ids", "text[]"),
    ("session_ids", "uuid[]"),
    ("jtis", "text[]"),
    ("kids", "text[]"),
    ("not_befores", "timestamptz[]"),
    ("expires", "timestamptz[]"),
    ("reasons", "text[]"),
    ("event_ids", "uuid[]"),
    ("versions", "smallint[]"),
    ("payloads", "jsonb[]"),
)

# The open sessions the batch's events name (by session, or by user for a watermark).
_OPEN_SESSIONS = _open_sessions(
    "(SELECT DISTINCT session_id FROM batch WHERE type = 'session.revoked') AS k",
    "(SELECT DISTINCT user_id FROM batch WHERE type = 'user.revoked') AS k",
)

WRITE_TEMPLATE = f"""
WITH recorded AS MATERIALIZED (SELECT clock_timestamp() AS at),
batch AS MATERIALIZED (
    SELECT {{base}} + n AS position, type, occurred_at, user_id, session_id, jti, kid, not_before, expires_at,
           reason
    FROM unnest({{types}}, {{occurred}}, {{user_ids}}, {{session_ids}}, {{jtis}}, {{kids}}, {{not_befores}},
                {{expires}}, {{reasons}})
         WITH ORDINALITY
         AS b(type, occurred_at, user_id, session_id, jti, kid, not_before, expires_at, reason, n)),
logged AS (
    INSERT INTO event_log (position, event_id, type, occurred_at, user_id, session_id, jti, expires_at,
                           schema_version, payload, recorded_at)
    SELECT {{base}} + n, event_id, type, occurred_at, user_id, session_id, jti, expires_at, schema_version,
           payload || jsonb_build_object('position', {{base}} + n, 'prev_position', {{base}} + n - 1),
           (SELECT at FROM recorded)
    FROM unnest({{event_ids}}, {{types}}, {{occurred}}, {{user_ids}}, {{session_ids}}, {{jtis}}, {{expires}},
                {{versions}}, {{payloads}})
         WITH ORDINALITY
         AS x(event_id, type, occurred_at, user_id, session_id, jti, expires_at, schema_version, payload, n)),
revoked AS (
    INSERT INTO revocations (kind, subject, not_before, expires_at, position)
    {{{{revocation_rows}}}}
    ON CONFLICT (kind, subject) DO UPDATE SET
        not_before = greatest(revocations.not_before, excluded.not_before),
        expires_at = greatest(revocations.expires_at, excluded.expires_at),
        position = greatest(revocations.position, excluded.position)),
ended AS (
    UPDATE sessions SET revoked_at = x.revoked_at, revoked_reason = x.revoked_reason
    FROM ({session_ends(_OPEN_SESSIONS, "batch", None)}) AS x
    WHERE sessions.session_id = x.session_id)
SELECT {{base}}::bigint, (SELECT at FROM recorded)
""".replace("{{revocation_rows}}", REVOCATION_ROWS.format(events="batch"))


# The callers (each a request's access token, intents.Caller) that a revocation names, by their number in
# the arrays (1 on): the rule of intents.revocation_reason in SQL (tests/integration/test_log_writer.py
# holds the two equal). A watermark (user, global) revokes a token issued before it; any other row, the
# token it names.
CALLER_ARGS = (
    ("jtis", "text[]"),
    ("sids", "text[]"),
    ("users", "text[]"),
    ("kids", "text[]"),
    ("iats", "bigint[]"),
)
REVOKED_CALLERS = f"""
SELECT DISTINCT q.n
FROM unnest({{jtis}}, {{sids}}, {{users}}, {{kids}}, {{iats}})
     WITH ORDINALITY AS q(jti, sid, usr, kid, iat, n)
CROSS JOIN LATERAL (VALUES ('jti', q.jti), ('session', q.sid), ('user', q.usr), ('key', q.kid),
                           ('global', '{c.GLOBAL_SUBJECT}')) AS k(kind, subject)
CROSS JOIN LATERAL (SELECT not_before FROM revocations
                    WHERE kind = k.kind AND subject = k.subject LIMIT 1) AS r
WHERE k.kind NOT IN ('user', 'global') OR q.iat < extract(epoch FROM r.not_before)"""


def numbered(template: str, args: tuple[tuple[str, str], ...]) -> str:
    """A template as a prepared statement: each argument by its number, with its type."""
    return template.format(**{name: f"${i}::{kind}" for i, (name, kind) in enumerate(args, 1)})


WRITE = numbered(WRITE_TEMPLATE, ARGS)
REVOKED = numbered(REVOKED_CALLERS, CALLER_ARGS)

# The append function, one round trip for a batch whose decisions need no more than "these sessions are still
# open" (logouts, RFC 7009, ending a session): run as one statement with no transaction around it, it is a
# transaction of its own, so BEGIN, the lock, the write and COMMIT cost one round trip instead of four.
# The decisions were made before it, on the guess that every session the batch ends is open and that no
# caller's token is revoked; it takes the lock, checks the guess, and writes only if it held (no row back if
# not: the writer decides again under the lock, where it finds out which). PL/pgSQL runs each statement of
# a VOLATILE function in a snapshot of its own, taken when the statement starts (READ COMMITTED), so the
# head is read after the lock is held, as store.py's protocol asks.
# It lives in pg_temp, made on each of the writer's connections: the one definition of the write stays here.
APPEND_FUNCTION = f"""
CREATE FUNCTION pg_temp.tokenlife_append(
    {", ".join(f"a_{name} {kind}" for name, kind in ARGS)}, a_lock_timeout_ms integer, a_open uuid[],
    {", ".join(f"a_c_{name} {kind}" for name, kind in CALLER_ARGS)})
RETURNS TABLE (appended_after bigint, committed_at timestamptz)
LANGUAGE plpgsql VOLATILE AS $fn$
BEGIN
    PERFORM set_config('lock_timeout', a_lock_timeout_ms::text, true);
    PERFORM pg_advisory_xact_lock({APPEND_LOCK_KEY});
    IF (SELECT count(*) FROM sessions WHERE session_id = ANY(a_open) AND revoked_at IS NULL)
       <> cardinality(a_open) THEN
        RETURN;
    END IF;
    IF EXISTS ({REVOKED_CALLERS.format(**{name: f"a_c_{name}" for name, _ in CALLER_ARGS})}) THEN
        RETURN;
    END IF;
    SELECT coalesce(max(position), 0) INTO a_base FROM event_log;
    RETURN QUERY {WRITE_TEMPLATE.format(**{name: f"a_{name}" for name, _ in ARGS})};
    IF cardinality(a_types) > 0 THEN  -- a batch of checks alone appends nothing: nothing to tell
        PERFORM pg_notify('{NOTIFY_CHANNEL}', (a_base + cardinality(a_types))::text);
    END IF;
END
$fn$
"""
APPEND = "SELECT * FROM pg_temp.tokenlife_append({})".format(
    ", ".join(f"${i}" for i in range(1, len(ARGS) + len(CALLER_ARGS) + 3))
)


def columns(events: Sequence[c.Event]) -> list[Any]:
    """The events as the write's arrays, `base` excluded (ARGS in order, from `types` on)."""
    cols: list[list[Any]] = [[] for _ in range(len(ARGS) - 1)]
    for e in events:
        values = (
            e.type.value,
            e.occurred_at,
            getattr(e, "user_id", None),
            getattr(e, "session_id", None),
            getattr(e, "jti", None),
            getattr(e, "kid", None),
            getattr(e, "not_before", None),
            e.expires_at,
            getattr(e, "reason", None),
            e.event_id,
            e.schema_version,
            c.encode(e).decode(),
        )
        for col, value in zip(cols, values, strict=True):
            col.append(value)
    return cols


def caller_columns(callers: Sequence[Caller]) -> list[list[Any]]:
    """The callers as REVOKED_CALLERS's arrays (CALLER_ARGS in order)."""
    return [
        [x.jti for x in callers],
        [x.session_id for x in callers],
        [x.user_id for x in callers],
        [x.kid for x in callers],
        [x.iat for x in callers],
    ]
