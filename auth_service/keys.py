"""Signing keys: generation, encryption at rest, rotation, revocation, and the JWKS.

RS256 is the signing algorithm because verification is what every resource service pays on every request,
and RSA verification is the cheapest of the asymmetric choices with PyJWT (see docs/architecture.md for the
measurement); signing, paid once per token, is the slow side of RSA and happens only here.

The active key signs; a retired key stays in the JWKS until every token it signed has expired; a revoked key
leaves the JWKS at once and a `key.revoked` event tells resource services to refuse its tokens.
"""

from __future__ import annotations

import base64
import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from auth_service import contract as c
from auth_service import lifetimes
from auth_service.keyring import ALGORITHM, KeyRing, SigningKey
from auth_service.log import appending
from auth_service.tables import signing_keys

RSA_BITS = 2048


class KeyError_(LookupError):
    """No usable signing key, or an unknown kid."""


def _kek(key_encryption_key: str) -> AESGCM:
    raw = base64.urlsafe_b64decode(key_encryption_key + "=" * (-len(key_encryption_key) % 4))
    if len(raw) != 32:
        raise ValueError("TOKENLIFE_KEY_ENCRYPTION_KEY must be base64url of exactly 32 bytes")
    return AESGCM(raw)


def new_key_encryption_key() -> str:
    """A fresh key-encryption key, base64url without padding."""
    return base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()


def _encrypt(kek: AESGCM, kid: str, pem: bytes) -> bytes:
    nonce = os.urandom(12)
    return nonce + kek.encrypt(nonce, pem, kid.encode())  # the kid is bound as associated data


def _decrypt(kek: AESGCM, kid: str, blob: bytes) -> rsa.RSAPrivateKey:
    pem = kek.decrypt(blob[:12], blob[12:], kid.encode())
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyError_(f"key {kid} is not an RSA key")
    return key


def public_jwk(kid: str, public_key: rsa.RSAPublicKey) -> dict[str, Any]:
    """The public half as a JWK with kid, use and alg."""
    jwk: dict[str, Any] = jwt.algorithms.RSAAlgorithm.to_jwk(public_key, as_dict=True)
    return {**jwk, "kid": kid, "use": "sig", "alg": ALGORITHM}


async def rotate(conn: AsyncConnection, key_encryption_key: str) -> str:
    """Generate a new active key and retire the current one; returns the new kid."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    kid = uuid.uuid4().hex[:16]
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # Serialise rotations so that two instances starting at once cannot both create an active key.
    await conn.execute(text("LOCK TABLE signing_keys IN SHARE ROW EXCLUSIVE MODE"))
    now = datetime.now(UTC)
    await conn.execute(update(signing_keys).where(signing_keys.c.retired_at.is_(None)).values(retired_at=now))
    await conn.execute(
        signing_keys.insert().values(
            kid=kid,
            alg=ALGORITHM,
            public_jwk=public_jwk(kid, private.public_key()),
            private_key_encrypted=_encrypt(_kek(key_encryption_key), kid, pem),
            created_at=now,
        )
    )
    return kid


async def ensure_active_key(conn: AsyncConnection, key_encryption_key: str) -> str | None:
    """Create a first key when there is none at all (dev start-up); returns the new kid, if any."""
    await conn.execute(text("LOCK TABLE signing_keys IN SHARE ROW EXCLUSIVE MODE"))
    active = await conn.execute(
        select(signing_keys.c.kid).where(
            signing_keys.c.retired_at.is_(None), signing_keys.c.revoked_at.is_(None)
        )
    )
    if active.first() is not None:
        return None
    return await rotate(conn, key_encryption_key)


async def revoke(
    conn: AsyncConnection, kid: str, key_encryption_key: str, reason: str, *, lock_timeout_ms: int
) -> c.Event:
    """Revoke a key: it leaves the JWKS and a key.revoked event covers every token it signed.

    Revoking the active key first rotates to a new one, so the service never stands without a signing key.
    """
    async with appending(conn, lock_timeout_ms=lock_timeout_ms) as log_:
        row = (
            await conn.execute(select(signing_keys).where(signing_keys.c.kid == kid).with_for_update())
        ).one_or_none()
        if row is None:
            raise KeyError_(f"no signing key with kid {kid!r}")
        if row.retired_at is None:
            await rotate(conn, key_encryption_key)
        now = datetime.now(UTC)
        await conn.execute(
            update(signing_keys)
            .where(signing_keys.c.kid == kid)
            .values(revoked_at=now, retired_at=row.retired_at or now)
        )
        # Not last_signed + ttl: whoever holds a compromised key can sign tokens with any exp, so the
        # revocation must outlive every such token, and is never pruned.
        [event] = await log_.append([c.KeyRevoked(kid=kid, expires_at=c.FOREVER, reason=reason)])
    return event


async def load(conn: AsyncConnection, key_encryption_key: str, access_token_ttl: int) -> KeyRing:
    """Load the active key and every public key a live token may still need."""
    now = datetime.now(UTC)
    horizon = lifetimes.key_publication_horizon(now, access_token_ttl)
    rows = (
        await conn.execute(
            select(signing_keys)
            .where(signing_keys.c.revoked_at.is_(None))
            .where(signing_keys.c.retired_at.is_(None) | (signing_keys.c.retired_at > horizon))
            .order_by(signing_keys.c.created_at.desc())
        )
    ).all()
    kek = _kek(key_encryption_key)
    active: SigningKey | None = None
    publics: dict[str, rsa.RSAPublicKey] = {}
    for row in rows:
        public = jwt.algorithms.RSAAlgorithm.from_jwk(row.public_jwk)
        assert isinstance(public, rsa.RSAPublicKey)
        publics[row.kid] = public
        if row.retired_at is None and active is None:
            active = SigningKey(row.kid, _decrypt(kek, row.kid, row.private_key_encrypted))
    return KeyRing(
        active=active,
        jwks={"keys": [dict(row.public_jwk) for row in rows]},
        public_keys=publics,
        loaded_at=now,
    )


class KeyCache:
    """The instance's KeyRing: reloaded periodically, and early when a token names a kid it lacks."""

    # An unknown kid may reload the ring early, but at most this often: a stream of made-up kids must not
    # turn into a stream of database reads.
    MIN_RELOAD_INTERVAL = 1.0

    def __init__(self, ring: KeyRing, key_encryption_key: str, access_token_ttl: int) -> None:
        self._ring = ring
        self._kek = key_encryption_key
        self._ttl = access_token_ttl
        self._early_reload_at = 0.0

    def current(self) -> KeyRing:
        """The ring as last loaded."""
        return self._ring

    async def reload(self, conn: AsyncConnection) -> None:
        """Load the ring again (a rotation or revocation by another instance shows up here)."""
        self._ring = await load(conn, self._kek, self._ttl)

    async def know(self, conn: AsyncConnection, kid: str | None) -> None:
        """Reload early when `kid` is not in the ring (another instance may have rotated), rate-limited."""
        if kid is None or kid in self._ring.public_keys:
            return
        now = time.monotonic()
        if now - self._early_reload_at >= self.MIN_RELOAD_INTERVAL:
            self._early_reload_at = now
            await self.reload(conn)
