"""Logouts on stale statistics (bench/grant_speed.py runs it): logouts/s on a fresh revocations table against
one holding 100,000 rows whose statistics date from when it was empty (autovacuum off for it, never
analyzed), two databases side by side, rounds interleaved. The per-request plans must be index probes
whatever the statistics say."""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack

import asyncpg

from bench import log_load
from bench import wrk as load
from bench.log_speed import _mint_tokens
from bench.stack import _asyncpg_url, _database, _serve, ready

STALE_REVOCATIONS = 100_000


async def run(server_url: str, rounds: int) -> dict[str, list[float]]:
    """Logouts/s on a fresh revocations table against one holding 100,000 rows it was never analyzed with."""
    from auth_service.tokens.keys import new_key_encryption_key

    run_id = uuid.uuid4().hex[:8]
    kek = new_key_encryption_key()
    rates: dict[str, list[float]] = {"fresh": [], "stale": []}
    per_round = 9000
    async with AsyncExitStack() as stack:
        urls: dict[str, str] = {}
        tokens: dict[str, list[str]] = {}
        for name in rates:
            url = await _database(stack, server_url, f"tokenlife_bench_{name}_{run_id}", None)
            if name == "stale":
                conn = await asyncpg.connect(_asyncpg_url(server_url, url.rsplit("/", 1)[1]))
                try:  # the table's statistics stay those of an empty table: autovacuum off, never analyzed
                    await conn.execute("ALTER TABLE revocations SET (autovacuum_enabled = false)")
                    await conn.execute(_OLD_REVOCATIONS, STALE_REVOCATIONS)
                finally:
                    await conn.close()
            env = {
                "TOKENLIFE_ENV": "dev",
                "TOKENLIFE_DATABASE_URL": url,
                "TOKENLIFE_KEY_ENCRYPTION_KEY": kek,
                "TOKENLIFE_RELAY_ENABLED": "false",
            }
            auth, proc, log = _serve(stack, "auth", env)
            await ready(auth, proc, log, "auth service")
            urls[name] = auth
            tokens[name] = await _mint_tokens(url, kek, auth, rounds * per_round + 1000)
        wrk = load.available()
        for name in rates:  # warm-up, not counted
            await log_load.closed_round(wrk, urls[name], "/v1/auth/logout", tokens[name][-1000:])
        for r in range(rounds):
            for name in rates:
                mine = tokens[name][r * per_round : (r + 1) * per_round]
                done = await log_load.closed_round(wrk, urls[name], "/v1/auth/logout", mine)
                rates[name].append(done["rate"])
    return rates


_OLD_REVOCATIONS = """
INSERT INTO revocations (kind, subject, expires_at, position)
SELECT 'jti', 'old-' || g, now() + interval '1 hour', g FROM generate_series(1, $1) AS g
"""
