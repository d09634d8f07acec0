"""Authentication: who is calling, from an access token that verifies and is not revoked."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from auth_service import contract as c
from auth_service.context import AuthContext
from auth_service.errors import InvalidToken
from auth_service.tokens import SignedToken, parse_token, verify_access_token


@dataclass(frozen=True)
class Principal:
    """The caller, from a verified access token that is not revoked."""

    user_id: str
    session_id: uuid.UUID
    jti: str
    kid: str
    claims: Mapping[str, Any]


def revocation_reason(rows: list[tuple[str, str, datetime | None]], iat: int) -> str | None:
    """Why a token is revoked, given the revocation rows that name it (None: it is not)."""
    for kind, _subject, not_before in rows:
        if kind in (c.RevocationKind.USER, c.RevocationKind.GLOBAL):
            if not_before is not None and iat < not_before.timestamp():
                return f"{kind}_revoked"
        else:
            return f"{kind}_revoked"
    return None


async def know_kid(ctx: AuthContext, token: str) -> SignedToken | None:
    """The token parsed; the key ring reloaded first when it names a kid the ring lacks (the engine is only
    touched then). None: not a compact JWS at all."""
    signed = parse_token(token)
    kid = None if signed is None else signed.kid
    if kid is not None and kid not in ctx.keys.current().public_keys:
        async with ctx.engine.connect() as conn:
            await ctx.keys.know(conn, kid)
    return signed


async def authenticate(ctx: AuthContext, token: str) -> Principal:
    """Verify one of our access tokens and check the log's projections that it is not revoked."""
    s = ctx.settings
    signed = await know_kid(ctx, token)
    if signed is None:
        raise InvalidToken("malformed access token")
    kid, claims = verify_access_token(signed, ctx.keys.current(), issuer=s.issuer, audience=s.audience)
    try:
        session_id = uuid.UUID(str(claims["sid"]))
    except ValueError:
        raise InvalidToken("invalid sid claim") from None
    rows = await ctx.revocation_reads.rows(str(claims["jti"]), session_id, str(claims["sub"]), kid)
    if revocation_reason(rows, int(claims["iat"])):
        raise InvalidToken("token has been revoked")
    return Principal(str(claims["sub"]), session_id, str(claims["jti"]), kid, claims)
