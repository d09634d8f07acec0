"""Rebuilding the projections from the log gives exactly what the incremental path built."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from auth_service import contract as c
from auth_service.db.engine import create_engine
from auth_service.db.tables import revocations, sessions
from auth_service.log.store import append, appending

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
USERS = [f"u{i}" for i in range(8)]
SIDS = [uuid.UUID(int=i) for i in range(1, 25)]
JTIS = [f"j{i}" for i in range(10)]
# A narrow range of whole seconds, so creations, watermarks and refreshes often fall on the same instant
# (the rules' strict and non-strict comparisons meet there).
moments = st.integers(min_value=-40, max_value=40).map(lambda s: T0 + timedelta(seconds=s))
KINDS = [
    "start",
    "start",
    "start",
    "login",
    "refresh",
    "refresh",
    "token",
    "session",
    "user",
    "key",
    "global",
]


def _event(
    kind: str, user: str, sid: uuid.UUID, jti: str, at: datetime, until: datetime, agent: str | None
) -> c.Event:
    match kind:
        case "start":
            return c.SessionStarted(
                user_id=user,
                session_id=sid,
                client_id="web",
                user_agent=agent,
                client_address=agent and "192.0.2.7",
                occurred_at=at,
                expires_at=until,
            )
        case "login" | "refresh":
            return c.TokenIssued(
                user_id=user,
                session_id=sid,
                jti=jti,
                kid="k",
                issued_at=at,
                expires_at=until,
                occurred_at=at,
                cause=kind,
            )
        case "token":
            return c.TokenRevoked(jti=jti, expires_at=until, occurred_at=at, reason="revoke")
        case "session":
            return c.SessionRevoked(
                session_id=sid, user_id=user, expires_at=until, occurred_at=at, reason="x"
            )
        case "user":
            return c.UserRevoked(user_id=user, not_before=at, expires_at=until, occurred_at=at, reason="all")
        case "key":
            return c.KeyRevoked(kid=jti, expires_at=until, occurred_at=at, reason="k")
        case _:
            return c.GlobalRevoked(not_before=at, expires_at=until, occurred_at=at, reason="g")


events = st.builds(
    _event,
    st.sampled_from(KINDS),
    st.sampled_from(USERS),
    st.sampled_from(SIDS),
    st.sampled_from(JTIS),
    moments,
    moments,
    st.sampled_from([None, "agent"]),
)
# A history: transactions of one or more events each, appended in order; every kind of revocation
# interleaves with starts, logins and refreshes of the same users and sessions.
# Its length is drawn first, so long histories (hundreds of events) are as common as short ones.
histories = st.integers(min_value=3, max_value=80).flatmap(
    lambda n: st.lists(st.lists(events, min_size=1, max_size=8), min_size=n, max_size=n)
)


async def _projections(conn: AsyncConnection) -> tuple[list[Any], list[Any]]:
    s = (await conn.execute(select(sessions).order_by(sessions.c.session_id))).all()
    r = (await conn.execute(select(revocations).order_by(revocations.c.kind, revocations.c.subject))).all()
    return [tuple(row) for row in s], [tuple(row) for row in r]


async def _indexes(conn: AsyncConnection) -> list[Any]:
    rows = await conn.execute(
        text(
            "SELECT tablename, indexname, indexdef FROM pg_indexes"
            " WHERE tablename IN ('sessions', 'revocations') ORDER BY indexname"
        )
    )
    return [tuple(row) for row in rows]


async def _incremental_then_rebuilt(
    url: str, history: list[list[c.Event]], last_in_rebuild: bool
) -> tuple[Any, Any, int, list[Any], list[Any]]:
    """Append the history, read the projections, rebuild them from the log and read them again.

    With `last_in_rebuild` the last batch is appended in the rebuilding transaction itself (which the
    rebuild must see although no other connection can), else every batch commits on its own first."""
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            indexes = await _indexes(conn)
        for batch in history[:-1] if last_in_rebuild else history:
            async with engine.begin() as conn:
                await append(conn, batch, lock_timeout_ms=5000)
        async with engine.begin() as conn:
            async with appending(conn, lock_timeout_ms=5000) as log_:
                if last_in_rebuild:
                    await log_.append(history[-1])
                incremental = await _projections(conn)
                replayed = await log_.rebuild_projections()
        async with engine.connect() as conn:
            return incremental, await _projections(conn), replayed, indexes, await _indexes(conn)
    finally:
        await engine.dispose()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=histories, last_in_rebuild=st.booleans())
def test_rebuild_equals_incremental_projection(
    history: list[list[c.Event]], last_in_rebuild: bool, database_factory: Callable[[], str]
) -> None:
    incremental, rebuilt, replayed, indexes, rebuilt_indexes = asyncio.run(
        _incremental_then_rebuilt(database_factory(), history, last_in_rebuild)
    )
    assert rebuilt == incremental
    assert replayed == sum(len(batch) for batch in history)
    assert rebuilt_indexes == indexes  # every index and key constraint is back, as the migrations made it


async def test_a_failed_rebuild_leaves_the_projections_and_their_indexes_as_they_were(
    engine: AsyncEngine,
) -> None:
    history = [
        _event("start", "u1", SIDS[0], "j1", T0, T0 + timedelta(hours=1), None),
        _event("token", "u1", SIDS[0], "j1", T0, T0 + timedelta(hours=1), None),
    ]
    async with engine.begin() as conn:
        await append(conn, history, lock_timeout_ms=5000)
        # A stored session.started without the client_id its session row needs (not null): the sessions'
        # load fails after the revocations were loaded and indexed, and with them the whole rebuild.
        await conn.execute(
            text(
                "INSERT INTO event_log (position, event_id, type, occurred_at, user_id, session_id,"
                " expires_at, schema_version, payload)"
                " VALUES (3, gen_random_uuid(), 'session.started', now(), 'u2', gen_random_uuid(), now(), 1,"
                " '{}')"
            )
        )
    async with engine.connect() as conn:
        before, indexes = await _projections(conn), await _indexes(conn)
    with pytest.raises(asyncpg.NotNullViolationError, match="client_id"):
        async with engine.begin() as conn, appending(conn, lock_timeout_ms=5000) as log_:
            await log_.rebuild_projections()
    async with engine.connect() as conn:
        assert await _projections(conn) == before
        assert await _indexes(conn) == indexes
    async with engine.connect() as one, engine.connect() as two:  # both connections went back usable
        assert (await one.execute(text("SELECT 1"))).scalar_one() == (
            await two.execute(text("SELECT 1"))
        ).scalar_one()
