"""The successor pair of a rotated refresh token, so that a repeat within the grace window gets the same pair.

One refresh token must never become many: a stolen token replayed inside the grace window would otherwise
mint working siblings. So the rotation keeps its answer (access token, refresh token) sealed with AES-GCM
under a key derived from the key-encryption key, bound to the parent token's hash as associated data, and a
repeat within the window gets exactly that answer back. Only hashes of refresh tokens are stored elsewhere;
this row holds a live one, so it is encrypted and lives no longer than the grace window (expired rows are
deleted on the next rotation).
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from auth_service.db.tables import refresh_successors
from auth_service.tokens.access import AccessToken

__all__ = ["Successor", "load", "store"]

_INFO = b"tokenlife refresh successor v1"


@dataclass(frozen=True)
class Successor:
    """What a rotation answered: the access token and the successor refresh token."""

    access: AccessToken
    refresh_token: str


def _aead(key_encryption_key: str) -> AESGCM:
    raw = base64.urlsafe_b64decode(key_encryption_key + "=" * (-len(key_encryption_key) % 4))
    # A key of its own for this purpose: the signing keys' ciphertexts and these never share a key.
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(raw)
    return AESGCM(derived)


def _seal(key_encryption_key: str, parent_hash: bytes, successor: Successor) -> bytes:
    a = successor.access
    plain = json.dumps(
        {
            "token": a.token,
            "jti": a.jti,
            "kid": a.kid,
            "iat": a.issued_at.timestamp(),
            "exp": a.expires_at.timestamp(),
            "scope": a.scope,
            "refresh_token": successor.refresh_token,
        }
    ).encode()
    nonce = os.urandom(12)
    return nonce + _aead(key_encryption_key).encrypt(nonce, plain, parent_hash)


def _open(key_encryption_key: str, parent_hash: bytes, sealed: bytes) -> Successor:
    data = json.loads(_aead(key_encryption_key).decrypt(sealed[:12], sealed[12:], parent_hash))
    access = AccessToken(
        token=data["token"],
        jti=data["jti"],
        kid=data["kid"],
        issued_at=datetime.fromtimestamp(data["iat"], UTC),
        expires_at=datetime.fromtimestamp(data["exp"], UTC),
        scope=data["scope"],
    )
    return Successor(access, data["refresh_token"])


async def store(
    conn: AsyncConnection,
    key_encryption_key: str,
    parent_hash: bytes,
    successor: Successor,
    until: datetime,
    now: datetime,
) -> None:
    """Keep the rotation's answer for `parent_hash` until `until`; drop every expired one."""
    await conn.execute(delete(refresh_successors).where(refresh_successors.c.expires_at < now))
    await conn.execute(
        insert(refresh_successors).values(
            token_hash=parent_hash, sealed=_seal(key_encryption_key, parent_hash, successor), expires_at=until
        )
    )


async def load(
    conn: AsyncConnection, key_encryption_key: str, parent_hash: bytes, now: datetime
) -> Successor | None:
    """The answer the rotation of `parent_hash` gave, while its grace window lasts."""
    row = (
        await conn.execute(
            select(refresh_successors.c.sealed).where(
                refresh_successors.c.token_hash == parent_hash, refresh_successors.c.expires_at >= now
            )
        )
    ).one_or_none()
    return None if row is None else _open(key_encryption_key, parent_hash, row.sealed)
