"""The grants benchmark's setup (bench/grant_speed.py): users with a cheap bench-only hash, sessions with a
refresh token each, the request lines that use them, the auth processes, and their writer metrics."""

from __future__ import annotations

import asyncio
import re
import secrets
import time
import uuid
from contextlib import AsyncExitStack

import asyncpg
import httpx

from bench.stack import _serve, ready

USERS = 500
# Refresh tokens for one round under each signing algorithm (3 s closed loops: room for 2,000/s).
PER_ALGORITHM = 6_000
PASSWORD = "bench-password"
# The benchmark's users only: argon2id at its cheapest, so a login measures the write path. The service
# verifies whatever parameters a hash names; it never makes such a hash (passwords.py uses the defaults).

# Sessions with a refresh token each, for the given users, as the log and its projections would have them:
# session.started in the log (projected by the rebuild), the token's hash in refresh_tokens.
_SESSIONS = """
WITH s AS (SELECT gen_random_uuid() AS sid, u, h, row_number() OVER () AS n
           FROM unnest($1::text[], $2::bytea[]) AS x(u, h)),
logged AS (
    INSERT INTO event_log (position, event_id, type, occurred_at, user_id, session_id, expires_at,
                           schema_version, payload)
    SELECT $3 + n, id, 'session.started', now() - interval '10 seconds', u, sid, now() + interval '1 day', 1,
           jsonb_build_object('schema_version', 1, 'type', 'session.started', 'event_id', id,
               'occurred_at', now() - interval '10 seconds', 'user_id', u, 'session_id', sid,
               'client_id', 'tokenlife-console', 'expires_at', now() + interval '1 day', 'position', $3 + n,
               'prev_position', $3 + n - 1)
    FROM (SELECT *, gen_random_uuid() AS id FROM s) AS e)
INSERT INTO refresh_tokens (token_hash, session_id, generation, created_at, expires_at)
SELECT h, sid, 1, now(), now() + interval '1 day' FROM s
"""


def _cheap_hash() -> str:
    from argon2 import PasswordHasher

    return PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(PASSWORD)


async def prepare(dsn: str, database_url: str, kek: str, refreshes: int) -> dict[str, list[str]]:
    """Users and refresh tokens in the database; the request lines (bench/wrk.py) that use them."""
    from auth_service.maintenance import rebuild_projections
    from auth_service.settings import AuthSettings
    from auth_service.tokens.access import hash_refresh_token

    conn = await asyncpg.connect(dsn)
    try:
        cheap = await asyncio.to_thread(_cheap_hash)
        users = [str(uuid.uuid4()) for _ in range(USERS)]
        await conn.execute(
            "INSERT INTO users (user_id, email, password_hash)"
            " SELECT u::uuid, 'u' || n || '@bench.example', $2"
            " FROM unnest($1::text[]) WITH ORDINALITY AS x(u, n)",
            users,
            cheap,
        )
        tokens = [secrets.token_urlsafe(32) for _ in range(refreshes)]
        owners = [users[i % USERS] for i in range(refreshes)]
        head = await conn.fetchval("SELECT coalesce(max(position), 0) FROM event_log")
        await conn.execute(_SESSIONS, owners, [hash_refresh_token(t) for t in tokens], head)
    finally:
        await conn.close()
    await rebuild_projections(AuthSettings(database_url=database_url, key_encryption_key=kek, env="dev"))
    logins = [
        f"form:grant_type=password&username=u{n}%40bench.example&password={PASSWORD}&client_id="
        for n in range(1, USERS + 1)
    ]
    return {"refresh": [f"form:grant_type=refresh_token&refresh_token={t}" for t in tokens], "login": logins}


def bearer(lines: list[str]) -> list[str]:
    """The same number of requests for the bare route: its body is the line, as a bearer token."""
    return ["bearer:" + line.split("=", 2)[-1] for line in lines]


async def metrics(url: str) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(url + "/metrics")).text
    found = re.findall(r"^(tokenlife_log_[a-z0-9_]+?)(?:_total)? ([0-9.e+-]+)$", text, re.MULTILINE)
    return {name: float(value) for name, value in found}


class Servers:
    """The run's auth services (one relay leads), on one database and exchange."""

    def __init__(
        self, stack: AsyncExitStack, url: str, dsn: str, amqp_url: str, exchange: str, kek: str
    ) -> None:
        self.stack, self.url, self.dsn = stack, url, dsn
        self.env = {
            "TOKENLIFE_ENV": "dev",
            "TOKENLIFE_DATABASE_URL": url,
            "TOKENLIFE_AMQP_URL": amqp_url,
            "TOKENLIFE_EXCHANGE": exchange,
            "TOKENLIFE_KEY_ENCRYPTION_KEY": kek,
            "TOKENLIFE_RELAY_ENABLED": "true",
            # The algorithm rounds rotate the key; each process must sign with the new one within a second.
            "TOKENLIFE_KEY_REFRESH_SECONDS": "0.5",
        }

    async def auth(self) -> tuple[str, int]:
        url, proc, log = _serve(self.stack, "auth", self.env)
        await ready(url, proc, log, "auth service")
        return url, proc.pid


async def use_algorithm(database_url: str, kek: str, auth_urls: list[str], algorithm: str) -> str:
    """Rotate to a new active key made for `algorithm` and wait until every auth process publishes it: its
    JWKS and its active key are one ring, loaded together, so it signs with that key from then on; the new
    kid."""
    from auth_service.db.engine import create_engine
    from auth_service.tokens import keys

    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            kid = await keys.rotate(conn, kek, algorithm)  # type: ignore[arg-type]
    finally:
        await engine.dispose()
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient(timeout=5) as client:
        for url in auth_urls:
            while kid not in {
                k["kid"] for k in (await client.get(url + "/.well-known/jwks.json")).json()["keys"]
            }:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{url} did not load the {algorithm} key {kid} within 30 s")
                await asyncio.sleep(0.1)
    return kid
