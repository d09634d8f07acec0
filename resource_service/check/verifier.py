"""Verification of RFC 9068 JWT access tokens: shape, header, signature and claims (never revocation).

A token is parsed once: its segments are split and decoded here, the signature is checked by the PyJWK's own
algorithm (PyJWT's, bound to the key when the JWKS was read), and the claims are checked once, below. A
verified token's Principal is cached by the exact token string (claims are immutable), so a repeated token
costs one dict lookup and a clock read; its expiry is still checked on every use.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import jwt

from resource_service.check.entries import subject_key
from resource_service.check.keys import KeySource, valid_kid
from resource_service.check.state import TokenFacts
from resource_service.errors import InvalidToken

__all__ = ["Principal", "TokenVerifier"]

ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
# Three non-empty base64url segments, no padding: checked before any decoding so junk costs a regex only.
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_TYPES = frozenset({"at+jwt", "application/at+jwt"})
_REQUIRED_CLAIMS = ["iss", "aud", "sub", "exp", "iat", "jti", "sid"]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a verified access token speaks for."""

    sub: str
    sid: str
    jti: str
    client_id: str | None
    scopes: frozenset[str]
    iat: int
    exp: int
    kid: str
    claims: Mapping[str, Any] = field(repr=False)
    facts: TokenFacts = field(repr=False)


def _numeric_date(claims: Mapping[str, Any], name: str) -> int:
    value = claims[name]
    # bool is an int in Python; a JSON true is not a date.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidToken(f"claim {name} must be a number")
    # Flooring only ever makes a token look older: earlier exp, and an iat more likely under a watermark.
    return math.floor(value)


def _text_claim(claims: Mapping[str, Any], name: str) -> str:
    value = claims[name]
    if not isinstance(value, str) or not value:
        raise InvalidToken(f"claim {name} must be a non-empty string")
    return value


def _canonical_sid(sid: str) -> str:
    # Revocations key sessions by str(UUID); any other spelling of the same UUID must still match. The
    # canonical spelling (what the auth service issues) is recognised without building a UUID.
    if isinstance(subject_key(sid), int) and len(sid) == 36:
        return sid
    try:
        return str(uuid.UUID(sid))
    except ValueError:
        return sid


def _segment(data: str) -> bytes:
    # The shape check allows only the base64url alphabet; a length that no encoding produces still fails,
    # and so does a segment with stray bits after its last byte (two spellings of one token: refused).
    decoded = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
    if base64.urlsafe_b64encode(decoded).rstrip(b"=") != data.encode("ascii"):
        raise ValueError("non-canonical base64url")
    return decoded


def _json_object(data: bytes) -> dict[str, Any]:
    value = json.loads(data)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


class _Cached:
    """A verified token's Principal and the wall-clock time after which it is refused as expired."""

    __slots__ = ("dead_at", "principal")

    def __init__(self, principal: Principal, dead_at: float) -> None:
        self.principal = principal
        self.dead_at = dead_at


class TokenVerifier:
    """Verifies RFC 9068 access tokens against an issuer, an audience and a key source."""

    def __init__(
        self,
        issuer: str,
        audience: str,
        key_source: KeySource,
        *,
        algorithms: Iterable[str] = ("ES256", "EdDSA", "RS256"),
        leeway: int = 5,
        cache_size: int = 10_000,
        max_token_bytes: int = 8192,
        clock: Callable[[], float] = time.time,
    ) -> None:
        allowed = list(algorithms)
        if not allowed:
            raise ValueError("at least one algorithm must be allowed")
        for alg in allowed:
            if alg.lower() == "none" or alg.upper().startswith("HS"):
                raise ValueError(
                    f"algorithm {alg!r} is refused: resource services verify asymmetric signatures"
                )
            if alg not in ASYMMETRIC_ALGORITHMS:
                raise ValueError(f"unknown algorithm {alg!r}")
        self._issuer = issuer
        self._audience = audience
        self._keys = key_source
        self._algorithms = allowed
        self._leeway = leeway
        self._cache_size = cache_size
        self._max_token_bytes = max_token_bytes
        self._clock = clock
        # A plain dict in recency order: a hit is re-inserted at the end, eviction takes the first key.
        # (OrderedDict does the same, but its lookups are several times slower than a dict's.)
        self._cache: dict[str, _Cached] = {}
        self.cache_hits = 0

    @property
    def cache_size(self) -> int:
        """How many verified tokens the cache keeps (0: none)."""
        return self._cache_size

    def now(self) -> float:
        """The verifier's wall clock, in seconds since the epoch."""
        return self._clock()

    def dead_at(self, principal: Principal) -> float:
        """The wall-clock time from which a verified token is refused as expired (exp plus the leeway)."""
        return principal.exp + self._leeway

    async def verify(self, token: str) -> Principal:
        """The Principal of a valid token; raises InvalidToken otherwise."""
        if len(token) > self._max_token_bytes:
            raise InvalidToken("token too large")
        hit = self._cache.get(token)
        if hit is not None:
            # Claims cannot change, but time moves on: a cached token still expires.
            if self._clock() >= hit.dead_at:
                del self._cache[token]
                raise InvalidToken("token has expired")
            del self._cache[token]
            self._cache[token] = hit
            self.cache_hits += 1
            return hit.principal
        principal = await self._verify_uncached(token)
        if self._cache_size > 0:
            self._cache[token] = _Cached(principal, self.dead_at(principal))
            if len(self._cache) > self._cache_size:
                del self._cache[next(iter(self._cache))]
        return principal

    async def _verify_uncached(self, token: str) -> Principal:
        if _TOKEN_SHAPE.fullmatch(token) is None:
            raise InvalidToken("malformed token")
        header_part, payload_part, signature_part = token.split(".")
        try:
            header = _json_object(_segment(header_part))
            signature = _segment(signature_part)
        except (ValueError, binascii.Error):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise InvalidToken("malformed token") from None
        kid = self._check_header(header)
        # KeysUnavailable (503) from either call: a key we lack cannot be fetched now, so the token cannot
        # be judged; refusing it 401 would tell a client holding a valid token to sign in again.
        key = await self._keys.get(kid)
        if key is None:
            await self._keys.refresh()
            key = await self._keys.get(kid)
            if key is None:
                raise InvalidToken("unknown signing key")
        # The PyJWK binds its own algorithm, so a key can only verify with the algorithm it was published
        # for, whatever the header says; the allow-list is ours, never the token's.
        if header["alg"] != key.algorithm_name:
            raise InvalidToken("algorithm does not match the signing key")
        signing_input = f"{header_part}.{payload_part}".encode("ascii")
        try:
            valid = key.Algorithm.verify(signing_input, key.key, signature)
        except (jwt.PyJWTError, ValueError, TypeError):
            valid = False
        if not valid:
            raise InvalidToken("invalid signature")
        try:
            claims = _json_object(_segment(payload_part))
        except (ValueError, binascii.Error):
            raise InvalidToken("invalid token") from None
        return self._principal(claims, kid)

    def _check_header(self, header: Mapping[str, Any]) -> str:
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in _TYPES:
            raise InvalidToken("token type must be at+jwt")
        if header.get("alg") not in self._algorithms:
            raise InvalidToken("algorithm not allowed")
        # We implement no JWS extension, so a token that declares one critical must be refused (RFC 7515
        # §4.1.11); b64=false (RFC 7797) would change what the signature covers.
        if "crit" in header or "b64" in header:
            raise InvalidToken("unsupported critical header")
        # jku, x5u, jwk and x5c are never read: keys come only from our key source.
        kid = header.get("kid")
        if not valid_kid(kid):
            raise InvalidToken("missing or invalid kid")
        return kid

    def _principal(self, claims: dict[str, Any], kid: str) -> Principal:
        for name in _REQUIRED_CLAIMS:
            if name not in claims:
                raise InvalidToken(f"missing required claim {name}")
        if claims["iss"] != self._issuer:
            raise InvalidToken("invalid issuer")
        aud = claims["aud"]
        if not (aud == self._audience or (isinstance(aud, list) and self._audience in aud)):
            raise InvalidToken("invalid audience")
        now = self._clock()
        exp = _numeric_date(claims, "exp")
        iat = _numeric_date(claims, "iat")
        if exp <= now - self._leeway:
            raise InvalidToken("token has expired")
        if iat > now + self._leeway:
            raise InvalidToken("token issued in the future")
        if "nbf" in claims and _numeric_date(claims, "nbf") > now + self._leeway:
            raise InvalidToken("token not yet valid")
        sub = _text_claim(claims, "sub")
        jti = _text_claim(claims, "jti")
        sid = _canonical_sid(_text_claim(claims, "sid"))
        client_id = claims.get("client_id")
        if client_id is not None and not isinstance(client_id, str):
            raise InvalidToken("claim client_id must be a string")
        scope = claims.get("scope", "")
        if not isinstance(scope, str):
            raise InvalidToken("claim scope must be a space-separated string")
        return Principal(
            sub=sub,
            sid=sid,
            jti=jti,
            client_id=client_id,
            scopes=frozenset(scope.split()),
            iat=iat,
            exp=exp,
            kid=kid,
            claims=MappingProxyType(claims),
            facts=TokenFacts(jti=jti, sid=sid, sub=sub, iat=iat, exp=exp, kid=kid),
        )
