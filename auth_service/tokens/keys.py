"""Signing keys: generation, encryption at rest, rotation, revocation, and the JWKS.

RS256 is the signing algorithm because verification is what every resource service pays on every request,
and RSA verification is the cheapest of the asymmetric choices with PyJWT (see docs/architecture.md for the
measurement); signing, paid once per token, is the slow side of RSA and happens only here.

The active key signs; a retired key stays in the JWKS until every token it signed has expired; a revoked key
leaves the JWKS at once and a `key.revoked` event tells resource services to refuse its tokens.

The CPU-heavy steps (RSA key generation, decrypting and parsing a private key: tens of milliseconds each)
run in a worker thread, never on the event loop, and a reload opens only the keys it has not seen before:
a kid names one key for good (the kid is the ciphertext's associated data), so what was opened stays valid.
"""

from __future__ import annotations

import asyncio
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
from auth_service.db.tables import signing_keys
from auth_service.log import lifetimes
from auth_service.log.intents import NewSigningKey, RevokeKey, Verdict
from auth_service.log.writer import LogWriter
from auth_service.tokens.keyring import ALGORITHM, KeyRing, SigningKey

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
    # The RSA consistency check (about 100 ms here) holds the GIL throughout, so it would stall the event loop
    # even from a worker thread. It guards against a malformed key; this one is authenticated: AES-GCM proves
    # it is the very key `_generate` made and encrypted under our key-encryption key.
    key = serialization.load_pem_private_key(pem, password=None, unsafe_skip_rsa_key_validation=True)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyError_(f"key {kid} is not an RSA key")
    return key


def public_jwk(kid: str, public_key: rsa.RSAPublicKey) -> dict[str, Any]:
    """The public half as a JWK with kid, use and alg."""
    jwk: dict[str, Any] = jwt.algorithms.RSAAlgorithm.to_jwk(public_key, as_dict=True)
    return {**jwk, "kid": kid, "use": "sig", "alg": ALGORITHM}


def _generate(key_encryption_key: str) -> tuple[str, dict[str, Any], bytes]:
    """A new key: its kid, public JWK and encrypted private half (CPU-bound: run in a thread)."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    kid = uuid.uuid4().hex[:16]
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return kid, public_jwk(kid, private.public_key()), _encrypt(_kek(key_encryption_key), kid, pem)


async def rotate(conn: AsyncConnection, key_encryption_key: str) -> str:
    """Generate a new active key and retire the current one; returns the new kid."""
    kid, jwk, encrypted = await asyncio.to_thread(_generate, key_encryption_key)
    # Serialise rotations so that two instances starting at once cannot both create an active key.
    await conn.execute(text("LOCK TABLE signing_keys IN SHARE ROW EXCLUSIVE MODE"))
    now = datetime.now(UTC)
    await conn.execute(update(signing_keys).where(signing_keys.c.retired_at.is_(None)).values(retired_at=now))
    await conn.execute(
        signing_keys.insert().values(
            kid=kid,
            alg=ALGORITHM,
            public_jwk=jwk,
            private_key_encrypted=encrypted,
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
    writer: LogWriter, conn: AsyncConnection, kid: str, key_encryption_key: str, reason: str
) -> c.Event | None:
    """Revoke a key: it leaves the JWKS and a key.revoked event covers every token it signed (None: it was
    revoked already, nothing to tell).

    Revoking the active key makes its successor first, outside the log's lock (RSA generation takes tens of
    milliseconds), and the log writer makes it active in the same transaction as the revocation, so the
    service never stands without a signing key and nothing slow runs while the lock is held."""
    row = (await conn.execute(select(signing_keys).where(signing_keys.c.kid == kid))).one_or_none()
    if row is None:
        raise KeyError_(f"no signing key with kid {kid!r}")
    replacement = None
    if row.retired_at is None:
        new_kid, jwk, encrypted = await asyncio.to_thread(_generate, key_encryption_key)
        replacement = NewSigningKey(new_kid, ALGORITHM, jwk, encrypted, datetime.now(UTC))
    decision = await writer.decide([RevokeKey(kid, reason, replacement)])
    # A retired key never becomes active again, so a key seen retired needs no successor (no RESIGN).
    if decision.verdict is not Verdict.DONE:
        raise KeyError_(f"no signing key with kid {kid!r}")
    return decision.events[0] if decision.events else None


def _public_key(jwk: dict[str, Any]) -> rsa.RSAPublicKey:
    public = jwt.algorithms.RSAAlgorithm.from_jwk(jwk)
    if not isinstance(public, rsa.RSAPublicKey):
        raise KeyError_(f"key {jwk.get('kid')} is not an RSA key")
    return public


def _open(
    key_encryption_key: str, jwks: dict[str, dict[str, Any]], private: tuple[str, bytes] | None
) -> tuple[dict[str, rsa.RSAPublicKey], SigningKey | None]:
    """Parse public JWKs and decrypt one private key (CPU-bound: run in a thread)."""
    publics = {kid: _public_key(jwk) for kid, jwk in jwks.items()}
    if private is None:
        return publics, None
    kid, blob = private
    return publics, SigningKey(kid, _decrypt(_kek(key_encryption_key), kid, blob))


async def load(
    conn: AsyncConnection, key_encryption_key: str, access_token_ttl: int, previous: KeyRing | None = None
) -> KeyRing:
    """Load the active key and every public key a live token may still need.

    Keys already in `previous` (by kid) are reused as they are; only new ones are parsed and decrypted.
    """
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
    known = previous.public_keys if previous is not None else {}
    active_row = next((row for row in rows if row.retired_at is None), None)
    active, to_decrypt = None, None
    if active_row is not None:
        if previous is not None and previous.active is not None and previous.active.kid == active_row.kid:
            active = previous.active
        else:
            to_decrypt = (active_row.kid, active_row.private_key_encrypted)
    new_jwks = {row.kid: dict(row.public_jwk) for row in rows if row.kid not in known}
    opened: dict[str, rsa.RSAPublicKey] = {}
    if new_jwks or to_decrypt is not None:
        opened, decrypted = await asyncio.to_thread(_open, key_encryption_key, new_jwks, to_decrypt)
        active = active or decrypted
    return KeyRing(
        active=active,
        jwks={"keys": [dict(row.public_jwk) for row in rows]},
        public_keys={row.kid: known.get(row.kid) or opened[row.kid] for row in rows},
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
        self._ring = await load(conn, self._kek, self._ttl, previous=self._ring)

    async def know(self, conn: AsyncConnection, kid: str | None) -> None:
        """Reload early when `kid` is not in the ring (another instance may have rotated), rate-limited."""
        if kid is None or kid in self._ring.public_keys:
            return
        now = time.monotonic()
        if now - self._early_reload_at >= self.MIN_RELOAD_INTERVAL:
            self._early_reload_at = now
            await self.reload(conn)
