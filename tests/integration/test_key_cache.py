"""The key cache opens each signing key once: a reload reuses what it holds by kid and opens only new keys."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from sqlalchemy.ext.asyncio import AsyncEngine

from auth_service.db.engine import asyncpg_dsn
from auth_service.log.writer import LogWriter
from auth_service.settings import AuthSettings
from auth_service.tokens import keys

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


async def test_reload_reuses_opened_keys_and_opens_only_new_ones(
    engine: AsyncEngine, auth_settings: AuthSettings
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
        second_kid = await keys.rotate(conn, kek)
    await _reload(engine, cache)
    rotated = cache.current()
    assert rotated.active is not None
    assert rotated.active.kid == second_kid
    assert rotated.public_keys[first_kid] is first.public_keys[first_kid]  # the retired key, still published
    assert set(rotated.public_keys) == {first_kid, second_kid}
    assert {jwk["kid"] for jwk in rotated.jwks["keys"]} == {first_kid, second_kid}
    # The decrypted key signs what its published half verifies.
    message = b"tokenlife"
    signature = rotated.active.private_key.sign(message, padding.PKCS1v15(), hashes.SHA256())
    rotated.public_keys[second_kid].verify(signature, message, padding.PKCS1v15(), hashes.SHA256())


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
