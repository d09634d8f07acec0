"""The per-request check in process: warm (token seen before), cold (first sight), against their baselines.

Rounds are interleaved (a slice of each case per round) so that a noisy machine slows every case alike and
the ratios hold. Baselines: PyJWT's own decode of the same token with the same key and claim checks (for the
cold check), and a Redis EXISTS and a PostgreSQL primary-key lookup per request on loopback (for the warm).
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import time
from collections.abc import Coroutine
from typing import Any

import jwt

from bench import fixtures
from bench.results import Results, median_p99
from bench.timing import time_async

ROUNDS = 12
WARM_PER_ROUND = 300  # samples, each the mean of WARM_BATCH calls
WARM_BATCH = 20
COLD_PER_ROUND = 60
LOOKUPS_PER_ROUND = 80


def _drive(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never suspends (a static key source) without an event loop's overhead."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise RuntimeError("the coroutine suspended")


async def run(results: Results) -> None:
    """Warm and cold checks, PyJWT decode, Redis and PostgreSQL lookups, interleaved."""
    setup = fixtures.checked()
    guard = setup.guard
    tokens = [fixtures.token(setup.key) for _ in range(ROUNDS * COLD_PER_ROUND)]
    header = f"Bearer {tokens[0]}"
    _drive(guard.check(header))
    public = setup.key.public_key()
    redis = await _redis()
    pg = await _postgres()
    warm: list[float] = []
    cold: list[float] = []
    pyjwt: list[float] = []
    redis_us: list[float] = []
    pg_us: list[float] = []
    extra: list[float] = []
    cold_tokens = iter(tokens)
    for _ in range(ROUNDS):
        warm += _warm_samples(guard, header)
        for _ in range(COLD_PER_ROUND):
            # Pairs: the same fresh token through the Guard and through PyJWT, back to back.
            token = next(cold_tokens)
            bearer = f"Bearer {token}"
            start = time.perf_counter_ns()
            _drive(guard.check(bearer))
            middle = time.perf_counter_ns()
            jwt.decode(
                token,
                public,
                algorithms=[fixtures.ALGORITHM],
                audience=fixtures.AUDIENCE,
                issuer=fixtures.ISSUER,
            )
            end = time.perf_counter_ns()
            cold.append((middle - start) / 1000)
            pyjwt.append((end - middle) / 1000)
            extra.append((middle - start - (end - middle)) / 1000)
        if redis is not None:
            redis_us += await time_async(lambda: redis.exists("tokenlife:bench:jti"), LOOKUPS_PER_ROUND)
        if pg is not None:
            pg_us += await time_async(lambda: pg.fetchval("x"), LOOKUPS_PER_ROUND)
    if redis is not None:
        await redis.aclose()
    if pg is not None:
        await pg.close()

    live = f"{fixtures.LIVE:,} live revocations"
    results.row(
        "warm check (Guard.check_cached)",
        warm,
        note=(
            f"tokenlife: the warm map's lookup, expiry, freshness, revocation check, scope; {live}; each call"
            " gets a header string of its own, as a server decodes one per request (its hash is computed)"
        ),
    )
    results.samples("tokenlife warm check", warm)
    results.row(
        "cold check (Guard.check, first sight)",
        cold,
        note=f"one parse, one {fixtures.ALGORITHM} verify, claims once",
    )
    results.row("PyJWT decode, same token (baseline)", pyjwt, note="jwt.decode with audience and issuer")
    warm_median, _ = median_p99(warm)
    results.target(
        "warm check",
        warm_median,
        "us",
        "<= 2 us",
        warm_median <= 2.0,
        "" if warm_median <= 2.0 else _profile_warm(guard, header),
    )
    over = median_p99(extra)[0]
    results.row("cold check minus PyJWT decode, paired", extra, note="median of per-token differences")
    results.target(
        "cold check over PyJWT decode",
        over,
        "us",
        "<= +5 us",
        over <= 5.0,
    )
    if redis_us:
        results.row("check via Redis EXISTS (loopback)", redis_us, note="the usual alternative, per request")
        results.samples("Redis EXISTS", redis_us)
        ratio = median_p99(redis_us)[0] / warm_median
        results.target("Redis EXISTS / warm check", ratio, "x", ">= 50x", ratio >= 50)
    else:
        results.skipped("check via Redis EXISTS (loopback)", "Redis unreachable")
        results.target("Redis EXISTS / warm check", None, "x", ">= 50x", None)
    if pg_us:
        results.row("check via PostgreSQL PK lookup (loopback)", pg_us, note="prepared, one round trip")
        results.samples("PostgreSQL lookup", pg_us)
    else:
        results.skipped("check via PostgreSQL PK lookup (loopback)", "PostgreSQL unreachable")


def _warm_samples(guard: Any, header: str) -> list[float]:
    """WARM_PER_ROUND samples of the warm check, each the mean of WARM_BATCH calls on distinct header strings.

    A string caches its hash once computed, so calling with one header object over and over would measure a
    lookup no server makes: each request's header is a new string, decoded from the request's bytes.
    """
    check = guard.check_cached
    samples = []
    for _ in range(WARM_PER_ROUND):
        headers = [(header + " ")[:-1] for _ in range(WARM_BATCH)]
        start = time.perf_counter_ns()
        for value in headers:
            check(value, ())
        samples.append((time.perf_counter_ns() - start) / WARM_BATCH / 1000)
    return samples


def _profile_warm(guard: Any, header: str) -> str:
    """Where the warm path's time goes: the top functions of a profile, as text."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(20_000):
        guard.check_cached(header, ())
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(8)
    lines = [line.strip() for line in out.getvalue().splitlines() if "{" in line or ".py:" in line]
    return "profile (tottime, 20k calls): " + " | ".join(" ".join(line.split()) for line in lines[:8])


async def _redis() -> Any:
    try:
        import redis.asyncio as redis
    except ImportError:
        return None
    client = redis.from_url(os.environ.get("TOKENLIFE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/15"))
    try:
        await client.set("tokenlife:bench:jti", 1, ex=600)
    except (OSError, redis.RedisError):
        await client.aclose()
        return None
    return client


class _Lookup:
    """A prepared primary-key lookup on a temporary table, as a revocation check in PostgreSQL would be."""

    def __init__(self, conn: Any, stmt: Any) -> None:
        self._conn = conn
        self._stmt = stmt

    async def fetchval(self, jti: str) -> Any:
        return await self._stmt.fetchval(jti)

    async def close(self) -> None:
        await self._conn.close()


async def _postgres() -> _Lookup | None:
    import asyncpg

    dsn = os.environ.get("TOKENLIFE_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        conn = await asyncpg.connect(dsn, timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return None
    await conn.execute("CREATE TEMP TABLE bench_revoked (jti text PRIMARY KEY)")
    await conn.execute("INSERT INTO bench_revoked SELECT md5(i::text) FROM generate_series(1, 100000) i")
    stmt = await conn.prepare("SELECT EXISTS (SELECT 1 FROM bench_revoked WHERE jti = $1)")
    return _Lookup(conn, stmt)
