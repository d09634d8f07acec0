"""Rebuilding the projections from the log gives exactly what the incremental path built."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from auth_service import contract as c
from auth_service.db import create_engine
from auth_service.log import append, appending
from auth_service.tables import revocations, sessions

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
USERS = ["u1", "u2", "u3"]
SIDS = [uuid.UUID(int=i) for i in range(1, 6)]
JTIS = ["j1", "j2", "j3", "j4"]
moments = st.integers(min_value=-3600, max_value=3600).map(lambda s: T0 + timedelta(seconds=s))


def _event(kind: str, user: str, sid: uuid.UUID, jti: str, at: datetime, until: datetime) -> c.Event:
    match kind:
        case "start":
            return c.SessionStarted(
                user_id=user, session_id=sid, client_id="web", occurred_at=at, expires_at=until
            )
        case "refresh":
            return c.TokenIssued(
                user_id=user,
                session_id=sid,
                jti=jti,
                kid="k",
                issued_at=at,
                expires_at=until,
                occurred_at=at,
                cause="refresh",
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
    st.sampled_from(["start", "start", "refresh", "token", "session", "user", "key", "global"]),
    st.sampled_from(USERS),
    st.sampled_from(SIDS),
    st.sampled_from(JTIS),
    moments,
    moments,
)
# A history: transactions of one or more events each, appended in order.
histories = st.lists(st.lists(events, min_size=1, max_size=4), min_size=1, max_size=12)


async def _projections(engine: AsyncEngine) -> tuple[list[Any], list[Any]]:
    async with engine.connect() as conn:
        s = (await conn.execute(select(sessions).order_by(sessions.c.session_id))).all()
        r = (
            await conn.execute(select(revocations).order_by(revocations.c.kind, revocations.c.subject))
        ).all()
    return [tuple(row) for row in s], [tuple(row) for row in r]


async def _incremental_then_rebuilt(url: str, history: list[list[c.Event]]) -> tuple[Any, Any]:
    engine = create_engine(url, pool_size=1)
    try:
        for batch in history:
            async with engine.begin() as conn:
                await append(conn, batch, lock_timeout_ms=5000)
        incremental = await _projections(engine)
        async with engine.begin() as conn:
            async with appending(conn, lock_timeout_ms=5000) as log_:
                await log_.rebuild_projections()
        return incremental, await _projections(engine)
    finally:
        await engine.dispose()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=histories)
def test_rebuild_equals_incremental_projection(
    history: list[list[c.Event]], database_factory: Callable[[], str]
) -> None:
    incremental, rebuilt = asyncio.run(_incremental_then_rebuilt(database_factory(), history))
    assert rebuilt == incremental
