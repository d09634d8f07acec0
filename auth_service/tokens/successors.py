"""The successor pair of a rotated refresh token, so that a repeat within the grace window gets the same pair.

One refresh token must never become many: a stolen token replayed inside the grace window would otherwise
mint working siblings. So the rotation keeps its answer (access token, refresh token) sealed with AES-GCM
under a key derived from the key-encryption key, bound to the parent token's hash as associated data, and a
repeat within the window gets exactly that answer back. Only hashes of refresh tokens are stored elsewhere;
this row holds a live one, so it is encrypted and lives no longer than the grace window (expired rows are
deleted by the log writer every few seconds).

Sealing is done before the rotation is queued for the log writer, which stores the sealed answer in the batch
that rotates the token (log/batch_sql.py), and a repeat is answered from it (`unseal`). Pure: no I/O here.
"""

from __future__ import annotations

import base64
import functools
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from auth_service.tokens.access import AccessToken

__all__ = ["Successor", "seal", "unseal"]

_INFO = b"tokenlife refresh successor v1"


@dataclass(frozen=True)
class Successor:
    """What a rotation answered: the access token and the successor refresh token."""

    access: AccessToken
    refresh_token: str


@functools.lru_cache(maxsize=4)  # derived once per key, not once per refresh
def _aead(key_encryption_key: str) -> AESGCM:
    raw = base64.urlsafe_b64decode(key_encryption_key + "=" * (-len(key_encryption_key) % 4))
    # A key of its own for this purpose: the signing keys' ciphertexts and these never share a key.
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(raw)
    return AESGCM(derived)


def seal(key_encryption_key: str, parent_hash: bytes, successor: Successor) -> bytes:
    """The answer, encrypted and bound to the parent token's hash."""
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


def unseal(key_encryption_key: str, parent_hash: bytes, sealed: bytes) -> Successor:
    """The answer `seal` made for this parent (raises if it was made for another or altered)."""
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
