"""The per-request statements probe their tables by index, whatever the planner knows of them.

Each request's revocation check and each logout batch names a handful of rows. A plan that scans a whole
table (a hash join over every revocation, say) costs time in proportion to the table: fine on a test's ten
rows, 7 ms a batch at 28,000 live revocations (measured), and worse as the table grows. Such plans were
chosen here when the tables had no statistics (a server with autovacuum off, or a table never analyzed), and
a generic plan, which prepared statements and PL/pgSQL come to use, is chosen with no values in hand.

So each statement is written in a shape the planner can only run as index probes, and these tests hold it:
with 20,000 rows in each table, no statistics and then fresh ones, custom plan and generic plan.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from sqlalchemy import select
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql import ClauseElement

from auth_service.db.engine import asyncpg_dsn
from auth_service.db.tables import login_failures, users
from auth_service.log import batch_sql, locked_state, lookups, one_trip

pytestmark = pytest.mark.integration

ROWS = 20_000
TABLES_PROBED = {"revocations", "sessions", "refresh_tokens", "refresh_successors", "users", "login_failures"}


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        yield conn
    finally:
        await conn.close()


async def _fill(conn: asyncpg.Connection, rows: int) -> None:
    await conn.execute(
        """
        INSERT INTO revocations (kind, subject, not_before, expires_at, position)
        SELECT (ARRAY['jti', 'session', 'user', 'key'])[1 + g % 4], 's' || g,
               CASE WHEN g % 4 = 2 THEN now() END, now() + interval '1 hour', g
        FROM generate_series(1, $1) AS g
        """,
        rows,
    )
    await conn.execute(
        """
        INSERT INTO sessions (session_id, user_id, client_id, created_at, expires_at)
        SELECT gen_random_uuid(), 'u' || (g % 5000), 'web', now(), now() + interval '1 day'
        FROM generate_series(1, $1) AS g
        """,
        rows,
    )
    await conn.execute(
        """
        INSERT INTO refresh_tokens (token_hash, session_id, generation, created_at, expires_at)
        SELECT sha256(g::text::bytea), session_id, 1, now(), now() + interval '1 day'
        FROM (SELECT row_number() OVER () AS g, session_id FROM sessions) AS s
        """
    )
    await conn.execute(
        """
        INSERT INTO refresh_successors (token_hash, sealed, expires_at)
        SELECT sha256(('s' || g)::bytea), 'x', now() + interval '1 minute' FROM generate_series(1, $1) AS g
        """,
        rows,
    )
    await conn.execute(
        """
        INSERT INTO users (user_id, email, password_hash)
        SELECT gen_random_uuid(), 'user' || g || '@example.com', 'x' FROM generate_series(1, $1) AS g;
        """,
        rows,
    )
    await conn.execute(
        """
        INSERT INTO login_failures (key, failures, first_at, last_at)
        SELECT 'k' || g, 1, now(), now() FROM generate_series(1, $1) AS g
        """,
        rows,
    )


def _compiled(statement: ClauseElement) -> str:
    """A SQLAlchemy statement as the asyncpg dialect sends it ($1, $2, ...)."""
    compiled = statement.compile(
        dialect=postgresql.asyncpg.dialect(),  # type: ignore[no-untyped-call]
        compile_kwargs={"render_postcompile": True},
    )
    return str(compiled)


def _scans(plan: Any) -> set[str]:
    """The relations a plan reads with a sequential scan."""
    found: set[str] = set()
    if isinstance(plan, dict):
        if plan.get("Node Type") == "Seq Scan":
            found.add(plan["Relation Name"])
        for value in plan.values():
            found |= _scans(value)
    elif isinstance(plan, list):
        for item in plan:
            found |= _scans(item)
    return found


async def _seq_scanned(conn: asyncpg.Connection, sql: str, args: list[Any], *, generic: bool) -> set[str]:
    """The relations `sql`'s plan scans whole: its custom plan (made for these values), or its generic plan
    (made for none: what a prepared statement or PL/pgSQL comes to run, and keeps)."""
    if not generic:
        return _scans(json.loads(await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args)))
    await conn.execute(f"PREPARE tokenlife_plan AS {sql}")
    try:
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        nulls = ", ".join(["NULL"] * len(args))  # a generic plan is made without the values
        plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE tokenlife_plan({nulls})")
        return _scans(json.loads(plan))
    finally:
        await conn.execute("RESET plan_cache_mode; DEALLOCATE tokenlife_plan")


def _caller_args(n: int) -> list[Any]:
    return [
        [f"s{i}" for i in range(n)],
        [str(uuid.uuid4()) for _ in range(n)],
        [f"u{i}" for i in range(n)],
        ["k1"] * n,
        [1_700_000_000] * n,
    ]


def _write_values(n: int) -> dict[str, Any]:
    """Values for every argument of the batch's writes and checks, by name: n rows of each kind."""
    now = datetime.now(UTC)
    sids = [uuid.uuid4() for _ in range(n)]
    hashes = [uuid.uuid4().bytes * 2 for _ in range(n)]
    return {
        "base": 100,
        "recorded": now,
        "types": ["session.revoked"] * n,
        "occurred": [now] * n,
        "user_ids": [f"u{i}" for i in range(n)],
        "session_ids": sids,
        "jtis": [None] * n,
        "kids": [None] * n,
        "not_befores": [None] * n,
        "expires": [now + timedelta(hours=1)] * n,
        "reasons": ["logout"] * n,
        "event_ids": [uuid.uuid4() for _ in range(n)],
        "versions": [1] * n,
        "payloads": ["{}"] * n,
        "rt_hashes": hashes,
        "rt_sessions": sids,
        "rt_generations": [2] * n,
        "rt_created": [now] * n,
        "rt_expires": [now + timedelta(days=1)] * n,
        "rotated": hashes,
        "rotated_at": now,
        "succ_hashes": hashes,
        "succ_sealed": [b"x"] * n,
        "succ_until": now,
        "pw_users": [uuid.uuid4() for _ in range(n)],
        "pw_hashes": ["h"] * n,
        "pw_at": [now] * n,
        "nk_kids": [f"new-{i}" for i in range(n)],
        "nk_algs": ["RS256"] * n,
        "nk_jwks": ["{}"] * n,
        "nk_private": [b"x"] * n,
        "nk_created": [now] * n,
        "rk_kids": [f"old-{i}" for i in range(n)],
        "keys_at": now,
        "guess_open": sids,
        "guess_unrotated": hashes,
        "guess_users": [f"u{i}" for i in range(n)],
        "guess_iats": [1_700_000_000] * n,
    }


def _statement(template: str) -> tuple[str, Callable[[], list[Any]]]:
    """A template of batch_sql as a prepared statement, with values for its arguments."""
    statement = batch_sql.Statement(template, "")
    return statement.prepared, lambda: [_write_values(3)[name] for name in statement.args]


STATEMENTS: dict[str, tuple[str, Callable[[], list[Any]]]] = {
    "log writer: callers' revocation check": (batch_sql.REVOKED, lambda: _caller_args(3)),
    # PL/pgSQL runs it as an IF EXISTS (...) with a cached plan (the generic plan parametrised below)
    "append function: callers' revocation check": (
        f"SELECT EXISTS ({batch_sql.REVOKED})",
        lambda: _caller_args(3),
    ),
    **{
        f"log writer: write {i} ({w.rows})": _statement(w.template) for i, w in enumerate(batch_sql.WRITES, 1)
    },
    "append function: the guess's open sessions": _statement(one_trip.GUESS_OPEN),
    "append function: the guess's unrotated tokens": _statement(one_trip.GUESS_UNROTATED),
    "append function: the guess's watermarks": _statement(f"SELECT EXISTS ({one_trip.GUESS_BORN_REVOKED})"),
    "log writer: locked state": (
        locked_state.STATE,
        lambda: [
            [uuid.uuid4() for _ in range(3)],
            ["u1", "u2"],
            ["u1", "u3"],
            [b"\x00" * 32],
            datetime.now(UTC),
            ["k1"],
        ],
    ),
    "revocation reads": (
        lookups.REVOCATION_ROWS_BATCH,
        lambda: [[0, 0, 1, 1], ["jti", "session", "user", "global"], ["s1", "s2", "u1", "*"]],
    ),
    "a refresh token's session": (lookups._SESSION_OF_REFRESH_TOKEN, lambda: [b"\x00" * 32]),
    "a user's unrevoked sessions": (lookups._UNREVOKED_SESSIONS, lambda: ["u1"]),
    "a session's owner": (lookups._SESSION, lambda: [uuid.uuid4()]),
    "refresh: the token, its session, user and watermark": (lookups._REFRESH_STATE, lambda: [b"\x00" * 32]),
    "refresh: the answer kept for a repeat": (
        lookups._KEPT_ANSWER,
        lambda: [b"\x00" * 32, datetime.now(UTC)],
    ),
    "login: the user's watermark": (lookups._WATERMARK, lambda: ["u1"]),
    "login: the user by email, its failures on record and its watermark": (
        lookups._LOGIN_STATE,
        lambda: ["a@example.com", ["account:a@example.com", "address:127.0.0.1"]],
    ),
    # Reads in SQLAlchemy Core: the CLI's (commands.py), the password change's throttle (throttle.py).
    "the CLI's user by email": (
        _compiled(select(users.c.user_id).where(users.c.email == "a@example.com")),
        lambda: ["a@example.com"],
    ),
    "password change: the throttle's failures": (
        _compiled(select(login_failures).where(login_failures.c.key.in_(["k1", "k2"]))),
        lambda: ["k1", "k2"],
    ),
}


# Where a plan may be made: on an empty table (a new deployment: the plan PL/pgSQL and prepared statements
# cache is kept until something invalidates it, which with autovacuum off may be never), on a filled table
# never analyzed, on a filled and analyzed one.
TABLES = {"empty": (0, False), "filled, no statistics": (ROWS, False), "filled, analyzed": (ROWS, True)}


@pytest.mark.parametrize("tables", list(TABLES))
async def test_per_request_statements_never_scan_a_whole_table(conn: asyncpg.Connection, tables: str) -> None:
    rows, analyzed = TABLES[tables]
    await _fill(conn, rows)
    if analyzed:
        await conn.execute("ANALYZE")
    scanned = {
        (name, "generic plan" if generic else "custom plan"): found
        for name, (sql, args) in STATEMENTS.items()
        for generic in (False, True)
        if (found := await _seq_scanned(conn, sql, args(), generic=generic) & TABLES_PROBED)
    }
    assert scanned == {}
