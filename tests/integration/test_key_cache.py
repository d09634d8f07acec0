"""The key cache opens each signing key once: a reload reuses what it holds by kid and opens only new keys."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from auth_service.db.engine import asyncpg_dsn
from auth_service.log.writer import LogWriter
from auth_service.settings import AuthSettings
from auth_service.tokens import keys
from auth_service.tokens.access import sign_access_token, verify_access_token
from auth_service.tokens.keyring import ALGORITHMS, Algorithm

pytestmark = pytest.mark.integration
TTL = 300


async def _cache_after_rotations(
    engine: AsyncEngine, kek: str, rotations: int
) -> tuple[keys.KeyCache, list[str]]:
    """A key cache loaded after `rotations` new keys; the kids, oldest first."""
    async with engine.begin() as conn:
        kids = [await keys.rotate(conn, kek) for _ in range(rotations)]
    async with engine.connect() as conn:
        return keys.KeyCache(await keys.load(conn, kek, TTL), kek, TTL), kids


async def _reload(engine: AsyncEngine, cache: keys.KeyCache) -> None:
    async with engine.connect() as conn:
        await cache.reload(conn)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_reload_reuses_opened_keys_and_opens_only_new_ones(
    engine: AsyncEngine, auth_settings: AuthSettings, algorithm: Algorithm
) -> None:
    kek = auth_settings.key_encryption_key.get_secret_value()
    cache, [first_kid] = await _cache_after_rotations(engine, kek, 1)
    first = cache.current()
    assert first.active is not None
    assert first.active.kid == first_kid

    await _reload(engine, cache)
    unchanged = cache.current()
    # The very objects of the last load: nothing was decrypted or parsed again.
    assert unchanged.active is first.active
    assert unchanged.public_keys[first_kid] is first.public_keys[first_kid]

    async with engine.begin() as conn:
        second_kid = await keys.rotate(conn, kek, algorithm)
    await _reload(engine, cache)
    rotated = cache.current()
    assert rotated.active is not None
    assert rotated.active.kid == second_kid
    assert rotated.public_keys[first_kid] is first.public_keys[first_kid]  # the retired key, still published
    assert set(rotated.public_keys) == {first_kid, second_kid}
    assert {jwk["kid"] for jwk in rotated.jwks["keys"]} == {first_kid, second_kid}
    # The decrypted key signs, with the algorithm it was made for, what its published half verifies; a
    # token signed by the first key (ES256 by default) still verifies after the change of algorithm.
    assert rotated.active.alg == algorithm == rotated.public_keys[second_kid].alg
    assert rotated.jwks["keys"][0]["alg"] == algorithm
    for signer in (rotated.active, first.active):
        token = sign_access_token(
            signer,
            issuer="i",
            audience="a",
            subject="s",
            session_id=uuid.uuid4(),
            client_id="c",
            scope="",
            ttl=TTL,
            now=datetime.now(UTC),
        )
        assert verify_access_token(token.token, rotated, issuer="i", audience="a")[0] == signer.kid


async def test_a_revoked_key_leaves_the_reloaded_ring(
    engine: AsyncEngine, auth_settings: AuthSettings
) -> None:
    kek = auth_settings.key_encryption_key.get_secret_value()
    cache, [old_kid, new_kid] = await _cache_after_rotations(engine, kek, 2)
    assert set(cache.current().public_keys) == {old_kid, new_kid}
    async with (
        LogWriter.running(
            asyncpg_dsn(auth_settings.database_url), lock_timeout_ms=5000, access_token_ttl=300
        ) as writer,
        engine.connect() as conn,
    ):
        await keys.revoke(writer, conn, old_kid, kek, "compromised")
    await _reload(engine, cache)
    assert set(cache.current().public_keys) == {new_kid}
    assert [jwk["kid"] for jwk in cache.current().jwks["keys"]] == [new_kid]


async def test_revoking_the_active_key_makes_a_successor_of_its_algorithm(
    engine: AsyncEngine, auth_settings: AuthSettings
) -> None:
    kek = auth_settings.key_encryption_key.get_secret_value()
    async with engine.begin() as conn:
        revoked = await keys.rotate(conn, kek, "RS256")
    async with (
        LogWriter.running(
            asyncpg_dsn(auth_settings.database_url), lock_timeout_ms=5000, access_token_ttl=300
        ) as writer,
        engine.connect() as conn,
    ):
        await keys.revoke(writer, conn, revoked, kek, "compromised")
    async with engine.connect() as conn:
        ring = await keys.load(conn, kek, TTL)
    # An emergency changes one thing: verifiers that accept only RS256 keep accepting the new tokens.
    assert ring.active is not None
    assert ring.active.kid != revoked
    assert ring.active.alg == "RS256"
    assert revoked not in ring.public_keys
