"""The batched revocation check: concurrent checks share a query, and each gets exactly its own rows."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from auth_service import contract as c
from auth_service.db.engine import asyncpg_dsn
from auth_service.log.lookups import RevocationReads
from auth_service.log.store import append

pytestmark = pytest.mark.integration


class CountingPool:
    """An asyncpg pool that counts the connections asked of it: one per query here."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.acquired = 0

    def acquire(self) -> Any:
        self.acquired += 1
        return self.pool.acquire()


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[CountingPool]:
    raw = await asyncpg.create_pool(asyncpg_dsn(database_url), min_size=1, max_size=2)
    try:
        yield CountingPool(raw)
    finally:
        await raw.close()


async def test_concurrent_checks_share_queries_and_each_gets_its_own_rows(
    engine: AsyncEngine, pool: CountingPool
) -> None:
    at = datetime.now(UTC)
    later = at + timedelta(hours=1)
    sessions = [uuid.uuid4() for _ in range(60)]
    # Every third token revoked by jti, every fifth session ended, user "u7" watermarked, key "k2" revoked.
    events: list[c.Event] = [
        c.TokenRevoked(
            jti=f"j{i}", user_id=f"u{i % 10}", session_id=sessions[i], expires_at=later, reason="t"
        )
        for i in range(0, 60, 3)
    ]
    events += [
        c.SessionRevoked(session_id=sessions[i], user_id=f"u{i % 10}", expires_at=later, reason="t")
        for i in range(0, 60, 5)
    ]
    events += [
        c.UserRevoked(user_id="u7", not_before=at, expires_at=later, reason="t"),
        c.KeyRevoked(kid="k2", expires_at=later, reason="t"),
    ]
    async with engine.begin() as conn:
        await append(conn, events, lock_timeout_ms=5000)

    reads = RevocationReads(pool)
    checks = [(f"j{i}", sessions[i], f"u{i % 10}", "k2" if i == 59 else "k1") for i in range(60)]
    found = await asyncio.gather(*(reads.rows(*check) for check in checks))

    for i, rows in enumerate(found):
        expected = set()
        if i % 3 == 0:
            expected.add(("jti", f"j{i}"))
        if i % 5 == 0:
            expected.add(("session", str(sessions[i])))
        if i % 10 == 7:
            expected.add(("user", "u7"))
        if i == 59:
            expected.add(("key", "k2"))
        assert {(kind, subject) for kind, subject, _ in rows} == expected, i
    assert pool.acquired == 1  # all 60 queued before the first query started: one query for them all
    assert [nb for kind, _, nb in found[7] if kind == "user"] == [at]


async def test_a_failed_query_fails_its_waiters_and_the_next_batch_works(
    database_url: str, pool: CountingPool
) -> None:
    reads = RevocationReads(pool)
    await pool.pool.close()
    with pytest.raises(asyncpg.InterfaceError):
        await reads.rows("j", uuid.uuid4(), "u", "k")
    pool.pool = await asyncpg.create_pool(asyncpg_dsn(database_url), min_size=1, max_size=1)
    try:
        assert await reads.rows("j", uuid.uuid4(), "u", "k") == []
    finally:
        await pool.pool.close()


async def test_a_check_whose_request_went_away_does_not_disturb_the_others(pool: CountingPool) -> None:
    reads = RevocationReads(pool)
    gone = asyncio.create_task(reads.rows("j0", uuid.uuid4(), "u", "k"))
    others = [asyncio.create_task(reads.rows(f"j{i}", uuid.uuid4(), "u", "k")) for i in range(1, 5)]
    await asyncio.sleep(0)
    gone.cancel()
    assert await asyncio.gather(*others) == [[], [], [], []]
    with pytest.raises(asyncio.CancelledError):
        await gone
