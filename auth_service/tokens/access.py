"""Access tokens (RFC 9068 JWTs) and opaque refresh tokens. Pure: no I/O."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt

from auth_service.errors import InvalidToken
from auth_service.tokens.keyring import KeyRing, SigningKey

ACCESS_TOKEN_TYPE = "at+jwt"
MAX_TOKEN_BYTES = 8192
REFRESH_TOKEN_BYTES = 32  # 256 random bits
# The longest refresh token accepted anywhere (ours are 43 characters): longer is malformed, not looked up.
MAX_REFRESH_TOKEN = 512
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
        claims, key.private_key, algorithm=key.alg, headers={"kid": key.kid, "typ": ACCESS_TOKEN_TYPE}
    )
    return AccessToken(
        token=token,
        jti=jti,
        kid=key.kid,
        issued_at=datetime.fromtimestamp(issued, UTC),
        expires_at=datetime.fromtimestamp(issued + ttl, UTC),
        scope=scope,
    )


# Three non-empty base64url segments without padding (we never emit padding): junk costs one regex match.
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_TYPES = (ACCESS_TOKEN_TYPE, "application/at+jwt")


@dataclass(frozen=True, slots=True)
class SignedToken:
    """A compact JWS split once and its header decoded; the payload is decoded after the signature checks."""

    header: Mapping[str, Any]
    signing_input: bytes
    payload: str
    signature: bytes

    @property
    def kid(self) -> str | None:
        """The kid its header names, unverified (None when there is none or it is not a short string)."""
        kid = self.header.get("kid")
        return kid if isinstance(kid, str) and len(kid) <= 128 else None


def _segment(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def _json_object(data: bytes) -> dict[str, Any]:
    value = json.loads(data)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def parse_token(token: str) -> SignedToken | None:
    """The token split and its header decoded, or None when it is not a compact JWS at all."""
    if len(token) > MAX_TOKEN_BYTES or _TOKEN_SHAPE.fullmatch(token) is None:
        return None
    header_part, payload_part, signature_part = token.split(".")
    try:
        header = _json_object(_segment(header_part))
        signature = _segment(signature_part)
    except (ValueError, binascii.Error):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None
    return SignedToken(header, f"{header_part}.{payload_part}".encode("ascii"), payload_part, signature)


def verify_access_token(
    token: str | SignedToken,
    keyring: KeyRing,
    *,
    issuer: str,
    audience: str,
    leeway: float = 5.0,
    verify_exp: bool = True,
    now: float | None = None,
) -> tuple[str, Mapping[str, Any]]:
    """Check signature, type and claims of one of our access tokens; returns (kid, claims).

    One parse (pass a SignedToken already parsed to skip even that), one signature verification with the
    key the kid names and the one algorithm that key was made for, whatever else the header says, and the
    claims once.
    """
    signed = parse_token(token) if isinstance(token, str) else token
    if signed is None:
        raise InvalidToken("malformed access token")
    header = signed.header
    kid = signed.kid
    if kid is None or (key := keyring.public_keys.get(kid)) is None:
        raise InvalidToken("unknown signing key")
    if str(header.get("typ", "")).lower() not in _TYPES:
        raise InvalidToken("not an access token")
    if header.get("alg") != key.alg:
        raise InvalidToken("invalid token: algorithm not allowed")
    # We implement no JWS extension: a critical one must be refused (RFC 7515 section 4.1.11), and b64=false
    # (RFC 7797) would change what the signature covers.
    if "crit" in header or "b64" in header:
        raise InvalidToken("invalid token: unsupported critical header")
    if not key.verify(signed.signature, signed.signing_input):
        raise InvalidToken("invalid token: signature verification failed")
    try:
        claims = _json_object(_segment(signed.payload))
    except (ValueError, binascii.Error):
        raise InvalidToken("invalid token: payload is not a JSON object") from None
    _check_claims(claims, issuer, audience, leeway, verify_exp, time.time() if now is None else now)
    return kid, claims


def _numeric(claims: Mapping[str, Any], name: str) -> float:
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidToken(f"invalid token: claim {name} must be a number")
    return float(value)


def _check_claims(
    claims: Mapping[str, Any], issuer: str, audience: str, leeway: float, verify_exp: bool, now: float
) -> None:
    for name in REQUIRED_CLAIMS:
        if name not in claims:
            raise InvalidToken(f"invalid token: missing required claim {name}")
    exp = _numeric(claims, "exp")
    if verify_exp and exp <= now - leeway:
        raise InvalidToken("token expired")
    if _numeric(claims, "iat") > now + leeway:
        raise InvalidToken("invalid token: issued in the future")
    if "nbf" in claims and _numeric(claims, "nbf") > now + leeway:
        raise InvalidToken("invalid token: not yet valid")
    if claims["iss"] != issuer:
        raise InvalidToken("invalid token: invalid issuer")
    aud = claims["aud"]
    if not (aud == audience or (isinstance(aud, list) and audience in aud)):
        raise InvalidToken("invalid token: invalid audience")
    for name in ("sub", "jti", "sid"):
        if not isinstance(claims[name], str):
            raise InvalidToken(f"invalid token: claim {name} must be a string")


def unverified_kid(token: str) -> str | None:
    """The kid a token's header names, unverified (None when there is none or the token is malformed)."""
    signed = parse_token(token)
    return None if signed is None else signed.kid


def new_refresh_token() -> str:
    """An opaque refresh token: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(REFRESH_TOKEN_BYTES)


def hash_refresh_token(token: str) -> bytes:
    """What is stored instead of the token: SHA-256 (the token is random: no salt or stretching needed)."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
