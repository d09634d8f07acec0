"""The log writer's statements (writer.py): the batch's writes and the callers' revocation check (one_trip.py
runs the same text in one round trip; locked_state.py holds what the locked path reads, gates.py the gates).

Every statement is written once, with named arguments (`{name}`): `numbered` makes one a prepared statement
for the locked path, and the append function runs the same text over its own arguments (`a_name`). The
writes are several statements, run in order, so each sees what the one before wrote (a session started in a
batch can be ended by a watermark later in it); the locked path sends only those whose rows are not empty.
Most of them run before the append lock, under the gates of the batch's users (store.py's lock order): only
the events and the revocations, which carry positions, wait for the head.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from auth_service import contract as c
from auth_service.log.projections import REVOCATION_ROWS, session_ends

# Every probe of sessions, revocations and refresh tokens in these statements is a LATERAL subquery with LIMIT
# or OFFSET 0, or an equality on a primary key, which the planner cannot merge into a join: it stays one index
# probe per key named, at any table size. A plain join was planned as a hash join over the whole table when
# the plan was made on a near-empty table and then kept (PL/pgSQL and prepared statements keep their generic
# plans), and a batch took 7 ms at 28,000 live revocations. tests/integration/test_query_plans.py holds every
# statement here to index probes.


def open_sessions(session_ids: str, user_ids: str, started_in: str | None = None) -> str:
    """The open sessions (session_id, user_id, created_at, expires_at, start_position) named by `session_ids`
    (a relation with a session_id column) or owned by a user of `user_ids` (one with a user_id column), each
    probed by index. start_position is the position of the session's session.started in `started_in` (the
    batch being written) when it started there, else 0: a watermark earlier in the batch does not end it."""
    start = "0"
    if started_in is not None:
        start = f"""coalesce((SELECT st.position FROM {started_in} AS st
                   WHERE st.type = 'session.started' AND st.session_id = s.session_id LIMIT 1), 0)"""
    return f"""(
    SELECT s.session_id, s.user_id, s.created_at, s.expires_at, {start} AS start_position
    FROM {session_ids}
    CROSS JOIN LATERAL (SELECT session_id, user_id, created_at, expires_at FROM sessions
                        WHERE session_id = k.session_id AND revoked_at IS NULL LIMIT 1) AS s
    UNION
    SELECT s.session_id, s.user_id, s.created_at, s.expires_at, {start} AS start_position
    FROM {user_ids}
    CROSS JOIN LATERAL (SELECT session_id, user_id, created_at, expires_at FROM sessions
                        WHERE user_id = k.user_id AND revoked_at IS NULL OFFSET 0) AS s)"""


# The latest watermark that covers a user: theirs or the global one (both by primary key).
_WATERMARK = """(SELECT max(r.not_before) FROM revocations r
                 WHERE (r.kind = 'user' AND r.subject = {user})
                    OR (r.kind = 'global' AND r.subject = '{all}'))"""


def watermark_of(user: str) -> str:
    """The latest watermark covering `user` (an SQL expression), as a scalar subquery."""
    return _WATERMARK.format(user=user, all=c.GLOBAL_SUBJECT)


# Every argument of the writes and checks, with its type. The events' columns come first (`columns()`).
ARG_TYPES = {
    "base": "bigint",
    "types": "text[]",
    "occurred": "timestamptz[]",
    "user_ids": "text[]",
    "session_ids": "uuid[]",
    "jtis": "text[]",
    "kids": "text[]",
    "not_befores": "timestamptz[]",
    "expires": "timestamptz[]",
    "reasons": "text[]",
    "event_ids": "uuid[]",
    "versions": "smallint[]",
    "payloads": "jsonb[]",
    "recorded": "timestamptz",
    "rt_hashes": "bytea[]",
    "rt_sessions": "uuid[]",
    "rt_generations": "integer[]",
    "rt_created": "timestamptz[]",
    "rt_expires": "timestamptz[]",
    "rotated": "bytea[]",
    "rotated_at": "timestamptz",
    "succ_hashes": "bytea[]",
    "succ_sealed": "bytea[]",
    "succ_until": "timestamptz",
    "pw_users": "uuid[]",
    "pw_hashes": "text[]",
    "pw_at": "timestamptz[]",
    "nk_kids": "text[]",
    "nk_algs": "text[]",
    "nk_jwks": "jsonb[]",
    "nk_private": "bytea[]",
    "nk_created": "timestamptz[]",
    "rk_kids": "text[]",
    "keys_at": "timestamptz",
    # The callers whose tokens a revocation may name (intents.Caller), for REVOKED_CALLERS.
    "c_jtis": "text[]",
    "c_sids": "text[]",
    "c_users": "text[]",
    "c_kids": "text[]",
    "c_iats": "bigint[]",
    # The one-round-trip path's guess (one_trip.py).
    "guess_open": "uuid[]",
    "guess_unrotated": "bytea[]",
    "guess_users": "text[]",
    "guess_iats": "bigint[]",
    # The gates the batch takes (gates.py): its users' (each shared or alone), its sessions', and whether it
    # takes the whole log's alone.
    "gate_users": "text[]",
    "gate_user_alone": "boolean[]",
    "gate_sessions": "text[]",
    "gate_alone": "boolean",
}
EVENT_ARGS = list(ARG_TYPES)[1:13]

_EVENTS = """
INSERT INTO event_log (position, event_id, type, occurred_at, user_id, session_id, jti, expires_at,
                       schema_version, payload, recorded_at)
SELECT {base} + n, event_id, type, occurred_at, user_id, session_id, jti, expires_at, schema_version,
       payload || jsonb_build_object('position', {base} + n, 'prev_position', {base} + n - 1), {recorded}
FROM unnest({event_ids}, {types}, {occurred}, {user_ids}, {session_ids}, {jtis}, {expires}, {versions},
            {payloads})
     WITH ORDINALITY
     AS x(event_id, type, occurred_at, user_id, session_id, jti, expires_at, schema_version, payload, n)"""

# projections.project's session.started, set-wise.
_SESSIONS_STARTED = """
INSERT INTO sessions (session_id, user_id, client_id, created_at, user_agent, client_address, expires_at)
SELECT session_id, user_id, payload->>'client_id', occurred_at, payload->>'user_agent',
       payload->>'client_address', expires_at
FROM unnest({types}, {session_ids}, {user_ids}, {occurred}, {expires}, {payloads})
     AS x(type, session_id, user_id, occurred_at, expires_at, payload)
WHERE type = 'session.started'
ON CONFLICT (session_id) DO NOTHING"""

# projections.project's token.issued (refresh), set-wise.
_REFRESHED = """
UPDATE sessions SET last_refreshed_at = greatest(sessions.last_refreshed_at, x.at)
FROM (SELECT session_id, max(occurred_at) AS at
      FROM unnest({types}, {session_ids}, {occurred}, {payloads}) AS e(type, session_id, occurred_at, payload)
      WHERE type = 'token.issued' AND payload->>'cause' = 'refresh'
      GROUP BY session_id) AS x
WHERE sessions.session_id = x.session_id"""

# The batch's revoking events as a relation of projections.EVENT_COLUMNS, positioned.
_BATCH = """
SELECT {base} + n AS position, type, occurred_at, user_id, session_id, jti, kid, not_before, expires_at,
       reason
FROM unnest({types}, {occurred}, {user_ids}, {session_ids}, {jtis}, {kids}, {not_befores}, {expires},
            {reasons})
     WITH ORDINALITY
     AS b(type, occurred_at, user_id, session_id, jti, kid, not_before, expires_at, reason, n)"""

# The open sessions the batch's events end (by session, or by user for a watermark), as they stand after the
# batch's own session.started rows went in.
_ENDED_OPEN = open_sessions(
    "(SELECT DISTINCT session_id FROM batch WHERE type = 'session.revoked') AS k",
    "(SELECT DISTINCT user_id FROM batch WHERE type = 'user.revoked') AS k",
    started_in="batch",
)

# projections.project's revocations and session ends, set-wise (REVOCATION_ROWS, session_ends). The
# session ends are the statement itself (no result to fetch, so PL/pgSQL runs it as it is).
_REVOKED = f"""
WITH batch AS MATERIALIZED ({_BATCH}),
revoked AS (
    INSERT INTO revocations (kind, subject, not_before, expires_at, position)
    {REVOCATION_ROWS.format(events="batch")}
    ON CONFLICT (kind, subject) DO UPDATE SET
        not_before = greatest(revocations.not_before, excluded.not_before),
        expires_at = greatest(revocations.expires_at, excluded.expires_at),
        position = greatest(revocations.position, excluded.position))
UPDATE sessions SET revoked_at = x.revoked_at, revoked_reason = x.revoked_reason
FROM ({session_ends(_ENDED_OPEN, "batch", None)}) AS x
WHERE sessions.session_id = x.session_id"""

_ROTATED = "UPDATE refresh_tokens SET rotated_at = {rotated_at} WHERE token_hash = ANY({rotated})"

_REFRESH_TOKENS = """
INSERT INTO refresh_tokens (token_hash, session_id, generation, created_at, expires_at)
SELECT * FROM unnest({rt_hashes}, {rt_sessions}, {rt_generations}, {rt_created}, {rt_expires})"""

_SUCCESSORS = """
INSERT INTO refresh_successors (token_hash, sealed, expires_at)
SELECT h, s, {succ_until} FROM unnest({succ_hashes}, {succ_sealed}) AS x(h, s)"""

# By primary key (= ANY), each user's last change in the batch winning, as one change after another would.
_PASSWORDS = """
UPDATE users SET (password_hash, password_changed_at) = (
    SELECT x.h, x.at FROM unnest({pw_users}, {pw_hashes}, {pw_at}) WITH ORDINALITY AS x(u, h, at, n)
    WHERE x.u = users.user_id ORDER BY x.n DESC LIMIT 1)
WHERE users.user_id = ANY({pw_users})"""


# A key revocation's successor becomes the active key (tokens/keys.py: a new key retires the others)... The
# append function runs every write whatever its rows, so a write must do nothing when its arrays are empty.
_NEW_KEYS = """
WITH made AS (
    INSERT INTO signing_keys (kid, alg, public_jwk, private_key_encrypted, created_at)
    SELECT * FROM unnest({nk_kids}, {nk_algs}, {nk_jwks}, {nk_private}, {nk_created}))
UPDATE signing_keys SET retired_at = {keys_at}
WHERE cardinality({nk_kids}) > 0 AND retired_at IS NULL AND kid <> ALL({nk_kids})"""

# ...and the key revoked leaves the JWKS at once (key.revoked covers its tokens).
_REVOKED_KEYS = """
UPDATE signing_keys SET revoked_at = {keys_at}, retired_at = coalesce(retired_at, {keys_at})
WHERE kid = ANY({rk_kids})"""


@dataclass(frozen=True)
class Statement:
    """One of the batch's writes: its text with named arguments, and the argument whose rows it writes (the
    locked path skips it when that argument is empty)."""

    template: str
    rows: str
    # When the append function runs it (over its `a_` arguments); by default: its rows are not empty.
    when: str = ""

    @property
    def guard(self) -> str:
        """The condition under which it has anything to do."""
        return self.when or f"cardinality({{{self.rows}}}) > 0"

    @property
    def args(self) -> list[str]:
        """Its arguments' names, in the order they first appear."""
        names = [name for _, name, _, _ in string.Formatter().parse(self.template) if name]
        return list(dict.fromkeys(names))

    @property
    def prepared(self) -> str:
        """As a prepared statement: each argument by its number, with its type."""
        return self.template.format(
            **{name: f"${i}::{ARG_TYPES[name]}" for i, name in enumerate(self.args, 1)}
        )


# Before the append lock, in order, each seeing what the ones before wrote (sessions started before they are
# refreshed): the rows of the batch's users, which no one else writes while it holds their gates, and the
# signing keys, which only a batch holding the whole log's gate alone writes.
BEFORE_LOCK = (
    Statement(_SESSIONS_STARTED, "types", "'session.started' = ANY({types})"),
    Statement(_REFRESHED, "types", "'token.issued' = ANY({types})"),
    Statement(_ROTATED, "rotated"),
    Statement(_REFRESH_TOKENS, "rt_hashes"),
    Statement(_SUCCESSORS, "succ_hashes"),
    Statement(_PASSWORDS, "pw_users"),
    Statement(_NEW_KEYS, "nk_kids"),
    Statement(_REVOKED_KEYS, "rk_kids"),
)
# Under it: what carries a position (the events; the revocations, and the session ends they make, after the
# sessions the batch started).
UNDER_LOCK = (
    Statement(_EVENTS, "types"),
    Statement(
        _REVOKED,
        "types",
        "{types} && ARRAY['token.revoked', 'session.revoked', 'user.revoked', 'key.revoked',"
        " 'global.revoked']::text[]",
    ),
)
WRITES = BEFORE_LOCK + UNDER_LOCK

# The callers (each a request's access token, intents.Caller) that a revocation names, by their number in
# the arrays (1 on): the rule of intents.revocation_reason in SQL (tests/integration/test_log_writer.py
# holds the two equal). A watermark (user, global) revokes a token issued before it; any other row, the
# token it names.
REVOKED_CALLERS = f"""
SELECT DISTINCT q.n
FROM unnest({{c_jtis}}, {{c_sids}}, {{c_users}}, {{c_kids}}, {{c_iats}})
     WITH ORDINALITY AS q(jti, sid, usr, kid, iat, n)
CROSS JOIN LATERAL (VALUES ('jti', q.jti), ('session', q.sid), ('user', q.usr), ('key', q.kid),
                           ('global', '{c.GLOBAL_SUBJECT}')) AS k(kind, subject)
CROSS JOIN LATERAL (SELECT not_before FROM revocations
                    WHERE kind = k.kind AND subject = k.subject LIMIT 1) AS r
WHERE k.kind NOT IN ('user', 'global') OR q.iat < extract(epoch FROM r.not_before)"""
REVOKED = Statement(REVOKED_CALLERS, "c_jtis").prepared


def numbered(template: str) -> str:
    """Any of these templates as a prepared statement (for tests and plans): arguments by number, typed."""
    return Statement(template, "").prepared
