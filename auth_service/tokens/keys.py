"""Signing keys: generation, encryption at rest, rotation, revocation, and the JWKS.

Each key is made for one algorithm (keyring.py: ES256 by default; EdDSA or RS256 by
TOKENLIFE_SIGNING_ALGORITHM) and keeps it for life; a change of the setting takes effect at the next rotation,
which `ensure_active_key` makes at a dev start and `tokenlife keys rotate` makes in production.

The active key signs; a retired key stays in the JWKS until every token it signed has expired; a revoked key
leaves the JWKS at once and a `key.revoked` event tells resource services to refuse its tokens.

The CPU-heavy steps (RSA key generation, decrypting and parsing a private key: up to tens of milliseconds)
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
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from auth_service import contract as c
from auth_service.db.tables import signing_keys
from auth_service.log import lifetimes
from auth_service.log.intents import NewSigningKey, RevokeKey, Verdict
from auth_service.log.writer import LogWriter
from auth_service.tokens.keyring import (
    ALGORITHMS,
    DEFAULT_ALGORITHM,
    Algorithm,
    KeyRing,
    PrivateKey,
    PublicKey,
    SigningKey,
    VerifyingKey,
    algorithm_of,
)

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


def _decrypt(kek: AESGCM, kid: str, blob: bytes) -> PrivateKey:
    pem = kek.decrypt(blob[:12], blob[12:], kid.encode())
    # The RSA consistency check (about 100 ms here) holds the GIL throughout, so it would stall the event loop
    # even from a worker thread. It guards against a malformed key; this one is authenticated: AES-GCM proves
    # it is the very key `_generate` made and encrypted under our key-encryption key.
    key = serialization.load_pem_private_key(pem, password=None, unsafe_skip_rsa_key_validation=True)
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise KeyError_(f"key {kid} is of a type that does not sign here")
    algorithm_of(key)  # an EC key off P-256 is refused here, not at its first signature
    return key


def public_jwk(kid: str, public_key: PublicKey) -> dict[str, Any]:
    """The public half as a JWK with kid, use and alg."""
    alg = algorithm_of(public_key)
    encoder: Any = {
        "RS256": jwt.algorithms.RSAAlgorithm,
        "ES256": jwt.algorithms.ECAlgorithm,
        "EdDSA": jwt.algorithms.OKPAlgorithm,
    }[alg]
    jwk: dict[str, Any] = encoder.to_jwk(public_key, as_dict=True)
    return {**jwk, "kid": kid, "use": "sig", "alg": alg}


def _new_private_key(algorithm: Algorithm) -> PrivateKey:
    if algorithm == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    if algorithm == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


def _generate(key_encryption_key: str, algorithm: Algorithm) -> tuple[str, dict[str, Any], bytes]:
    """A new key: its kid, public JWK and encrypted private half (CPU-bound: run in a thread)."""
    if algorithm not in ALGORITHMS:
        raise KeyError_(f"unknown signing algorithm {algorithm!r} (one of {', '.join(ALGORITHMS)})")
    private = _new_private_key(algorithm)
    kid = uuid.uuid4().hex[:16]
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return kid, public_jwk(kid, private.public_key()), _encrypt(_kek(key_encryption_key), kid, pem)


async def rotate(
    conn: AsyncConnection, key_encryption_key: str, algorithm: Algorithm = DEFAULT_ALGORITHM
) -> str:
    """Generate a new active key for `algorithm` and retire the current one; returns the new kid."""
    kid, jwk, encrypted = await asyncio.to_thread(_generate, key_encryption_key, algorithm)
    # Serialise rotations so that two instances starting at once cannot both create an active key.
    await conn.execute(text("LOCK TABLE signing_keys IN SHARE ROW EXCLUSIVE MODE"))
    now = datetime.now(UTC)
    await conn.execute(update(signing_keys).where(signing_keys.c.retired_at.is_(None)).values(retired_at=now))
    await conn.execute(
        signing_keys.insert().values(
            kid=kid,
            alg=algorithm,
            public_jwk=jwk,
            private_key_encrypted=encrypted,
            created_at=now,
        )
    )
    return kid


async def active_algorithm(conn: AsyncConnection) -> str | None:
    """The algorithm of the active key (None: there is none)."""
    return (
        await conn.execute(
            select(signing_keys.c.alg).where(
                signing_keys.c.retired_at.is_(None), signing_keys.c.revoked_at.is_(None)
            )
        )
    ).scalar_one_or_none()


async def ensure_active_key(
    conn: AsyncConnection, key_encryption_key: str, algorithm: Algorithm = DEFAULT_ALGORITHM
) -> str | None:
    """Make an active key for `algorithm` when there is none, or when the active one signs with another
    algorithm (dev start-up: the setting changed); returns the new kid, if any. The replaced key is retired,
    not revoked: tokens it signed stay valid until they expire."""
    await conn.execute(text("LOCK TABLE signing_keys IN SHARE ROW EXCLUSIVE MODE"))
    if await active_algorithm(conn) == algorithm:
        return None
    return await rotate(conn, key_encryption_key, algorithm)


async def revoke(
    writer: LogWriter,
    conn: AsyncConnection,
    kid: str,
    key_encryption_key: str,
    reason: str,
    algorithm: Algorithm | None = None,
) -> c.Event | None:
    """Revoke a key: it leaves the JWKS and a key.revoked event covers every token it signed (None: it was
    revoked already, nothing to tell).

    Revoking the active key makes its successor first, outside the log's lock (RSA generation takes tens of
    milliseconds), and the log writer makes it active in the same transaction as the revocation, so the
    service never stands without a signing key and nothing slow runs while the lock is held. The successor
    signs with `algorithm`, by default the revoked key's own: an emergency changes one thing, and verifiers
    that accept only that algorithm keep working."""
    row = (await conn.execute(select(signing_keys).where(signing_keys.c.kid == kid))).one_or_none()
    if row is None:
        raise KeyError_(f"no signing key with kid {kid!r}")
    replacement = None
    if row.retired_at is None:
        alg = algorithm or (row.alg if row.alg in ALGORITHMS else DEFAULT_ALGORITHM)
        new_kid, jwk, encrypted = await asyncio.to_thread(_generate, key_encryption_key, alg)
        replacement = NewSigningKey(new_kid, alg, jwk, encrypted, datetime.now(UTC))
    decision = await writer.decide([RevokeKey(kid, reason, replacement)])
    # A retired key never becomes active again, so a key seen retired needs no successor (no RESIGN).
    if decision.verdict is not Verdict.DONE:
        raise KeyError_(f"no signing key with kid {kid!r}")
    return decision.events[0] if decision.events else None


def _public_key(jwk: dict[str, Any]) -> VerifyingKey:
    """The JWK's public key bound to its algorithm (the `alg` it was published with must be the key's)."""
    decoder: Any = {"RSA": jwt.algorithms.RSAAlgorithm, "EC": jwt.algorithms.ECAlgorithm}.get(
        jwk.get("kty", ""), jwt.algorithms.OKPAlgorithm
    )
    public = decoder.from_jwk(jwk)
    if not isinstance(public, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise KeyError_(f"key {jwk.get('kid')} is not a public signing key")
    alg = algorithm_of(public)
    if jwk.get("alg", alg) != alg:
        raise KeyError_(f"key {jwk.get('kid')} is published for {jwk.get('alg')}, not {alg}")
    return VerifyingKey(alg, public)


def _open(
    key_encryption_key: str, jwks: dict[str, dict[str, Any]], private: tuple[str, bytes] | None
) -> tuple[dict[str, VerifyingKey], SigningKey | None]:
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
    opened: dict[str, VerifyingKey] = {}
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
