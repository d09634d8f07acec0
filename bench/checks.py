"""The revocation check per request: tokenlife's in-memory state against Redis and PostgreSQL lookups."""

from __future__ import annotations

import gc
import os
import random
import time
import tracemalloc
import uuid
from datetime import UTC, datetime, timedelta

from auth_service import contract as c
from bench.timing import summarise, time_async, time_sync
from resource_service.state import RevocationState, TokenFacts

LIVE = 100_000  # live revocations held
N = 5000


def _events(count: int) -> list[c.Event]:
    until = datetime.now(UTC) + timedelta(minutes=5)
    return [
        c.TokenRevoked(
            jti=uuid.uuid4().hex, expires_at=until, reason="bench", position=i, prev_position=i - 1
        )
        for i in range(1, count + 1)
    ]


def _facts(jti: str) -> TokenFacts:
    now = int(time.time())
    return TokenFacts(jti=jti, sid=str(uuid.uuid4()), sub=str(uuid.uuid4()), iat=now, exp=now + 300, kid="k")


def _memory_per_entry(count: int) -> float:
    events = _events(count)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    state = RevocationState()
    for event in events:
        state.apply(event)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert state.counts()["jti"] == count
    return (after - before) / count


async def run() -> list[dict[str, object]]:
    """Rows for each way of checking a token against LIVE revocations."""
    events = _events(LIVE)
    state = RevocationState()
    for event in events:
        state.apply(event)
    revoked = [e.jti for e in random.Random(1).sample(events, 100)]  # type: ignore[union-attr]
    probes = [_facts(j) for j in revoked] + [_facts(uuid.uuid4().hex) for _ in range(100)]
    cycle = iter(probes * (N * 200 // len(probes) + 1))
    rows: list[dict[str, object]] = [
        summarise(
            f"check in memory ({LIVE:,} live)",
            time_sync(lambda: state.is_revoked(next(cycle)), N, batch=100),
            "tokenlife: RevocationState.is_revoked, no I/O",
        ),
        {
            "case": "memory per live revocation",
            "median_us": None,
            "p99_us": None,
            "note": f"{_memory_per_entry(LIVE):.0f} bytes (tracemalloc, {LIVE:,} jti entries)",
        },
    ]
    rows.append(await _redis(revoked))
    rows.append(await _postgres(revoked))
    return rows


async def _redis(revoked: list[str]) -> dict[str, object]:
    url = os.environ.get("TOKENLIFE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
    case = "check via Redis EXISTS (loopback)"
    try:
        import redis.asyncio as redis
    except ImportError:
        return {"case": case, "median_us": None, "p99_us": None, "note": "skipped: pip install -e '.[bench]'"}
    client = redis.from_url(url)
    try:
        await client.set("tokenlife:bench:" + revoked[0], 1, ex=300)
        keys = iter([f"tokenlife:bench:{j}" for j in revoked] * (N // len(revoked) + 1))
        samples = await time_async(lambda: client.exists(next(keys)), N)
        return summarise(case, samples, "the usual alternative: one round trip per request")
    except (OSError, redis.RedisError) as exc:
        return {"case": case, "median_us": None, "p99_us": None, "note": f"skipped: {exc}"}
    finally:
        await client.aclose()


async def _postgres(revoked: list[str]) -> dict[str, object]:
    import asyncpg

    dsn = os.environ.get("TOKENLIFE_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    case = "check via PostgreSQL PK lookup (loopback)"
    try:
        conn = await asyncpg.connect(dsn)
    except (OSError, asyncpg.PostgresError) as exc:
        return {"case": case, "median_us": None, "p99_us": None, "note": f"skipped: {exc}"}
    try:
        await conn.execute("CREATE TEMP TABLE bench_revoked (jti text PRIMARY KEY)")
        await conn.executemany("INSERT INTO bench_revoked VALUES ($1)", [(j,) for j in revoked])
        stmt = await conn.prepare("SELECT EXISTS (SELECT 1 FROM bench_revoked WHERE jti = $1)")
        keys = iter(revoked * (N // len(revoked) + 1))
        samples = await time_async(lambda: stmt.fetchval(next(keys)), N)
        return summarise(case, samples, "prepared statement, one round trip per request")
    finally:
        await conn.close()
