"""Access tokens (RFC 9068 JWTs) and opaque refresh tokens. Pure: no I/O."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

from auth_service.errors import InvalidToken
from auth_service.keyring import ALGORITHM, KeyRing, SigningKey

ACCESS_TOKEN_TYPE = "at+jwt"
MAX_TOKEN_BYTES = 8192
REFRESH_TOKEN_BYTES = 32  # 256 random bits
REQUIRED_CLAIMS = ["iss", "aud", "sub", "exp", "iat", "jti", "sid"]


@dataclass(frozen=True)
class AccessToken:
    token: str
    jti: str
    kid: str
    issued_at: datetime
    expires_at: datetime
    scope: str


def sign_access_token(
    key: SigningKey,
    *,
    issuer: str,
    audience: str,
    subject: str,
    session_id: uuid.UUID,
    client_id: str,
    scope: str,
    ttl: int,
    now: datetime,
    not_before: datetime | None = None,
) -> AccessToken:
    """Sign an RFC 9068 access token; `not_before` lifts iat above a watermark set in the same second."""
    issued = max(int(now.timestamp()), int(not_before.timestamp()) if not_before else 0)
    jti = uuid.uuid4().hex
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "iat": issued,
        "exp": issued + ttl,
        "jti": jti,
        "client_id": client_id,
        "sid": str(session_id),
    }
    if scope:
        claims["scope"] = scope
    token = jwt.encode(
        claims, key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid, "typ": ACCESS_TOKEN_TYPE}
    )
    return AccessToken(
        token=token,
        jti=jti,
        kid=key.kid,
        issued_at=datetime.fromtimestamp(issued, UTC),
        expires_at=datetime.fromtimestamp(issued + ttl, UTC),
        scope=scope,
    )


def verify_access_token(
    token: str, keyring: KeyRing, *, issuer: str, audience: str, leeway: float = 5.0, verify_exp: bool = True
) -> tuple[str, Mapping[str, Any]]:
    """Check signature, type and claims of one of our access tokens; returns (kid, claims)."""
    if len(token) > MAX_TOKEN_BYTES or token.count(".") != 2:
        raise InvalidToken("malformed access token")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise InvalidToken("malformed access token") from None
    kid = header.get("kid")
    if not isinstance(kid, str) or kid not in keyring.public_keys:
        raise InvalidToken("unknown signing key")
    if str(header.get("typ", "")).lower() not in (ACCESS_TOKEN_TYPE, "application/at+jwt"):
        raise InvalidToken("not an access token")
    try:
        claims = jwt.decode(
            token,
            keyring.public_keys[kid],
            algorithms=[ALGORITHM],
            audience=audience,
            issuer=issuer,
            leeway=timedelta(seconds=leeway),
            options={"require": REQUIRED_CLAIMS, "verify_exp": verify_exp},
        )
    except jwt.ExpiredSignatureError:
        raise InvalidToken("token expired") from None
    except jwt.PyJWTError as exc:
        raise InvalidToken(f"invalid token: {exc}") from None
    return kid, claims


def unverified_kid(token: str) -> str | None:
    """The kid a token's header names, unverified (None when there is none or the token is malformed)."""
    if len(token) > MAX_TOKEN_BYTES or token.count(".") != 2:
        return None
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.PyJWTError:
        return None
    return kid if isinstance(kid, str) and len(kid) <= 128 else None


def new_refresh_token() -> str:
    """An opaque refresh token: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(REFRESH_TOKEN_BYTES)


def hash_refresh_token(token: str) -> bytes:
    """What is stored instead of the token: SHA-256 (the token is random: no salt or stretching needed)."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
