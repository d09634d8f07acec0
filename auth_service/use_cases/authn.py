"""Authentication: who is calling, from an access token that verifies and is not revoked."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from auth_service.context import AuthContext
from auth_service.errors import InvalidToken
from auth_service.log.intents import Caller, revocation_reason
from auth_service.tokens.access import SignedToken, parse_token, verify_access_token


@dataclass(frozen=True)
class Principal:
    """The caller, from a verified access token that is not revoked."""

    user_id: str
    session_id: uuid.UUID
    jti: str
    kid: str
    claims: Mapping[str, Any]

    @property
    def caller(self) -> Caller:
        """The token, as the log writer checks it against the revocations under the lock."""
        return Caller(self.jti, str(self.session_id), self.user_id, self.kid, int(self.claims["iat"]))


async def know_kid(ctx: AuthContext, token: str) -> SignedToken | None:
    """The token parsed; the key ring reloaded first when it names a kid the ring lacks (the engine is only
    touched then). None: not a compact JWS at all."""
    signed = parse_token(token)
    kid = None if signed is None else signed.kid
    if kid is not None and kid not in ctx.keys.current().public_keys:
        async with ctx.engine.connect() as conn:
            await ctx.keys.know(conn, kid)
    return signed


async def verify(ctx: AuthContext, token: str) -> Principal:
    """Verify one of our access tokens (signature, claims), not reading the revocations: for a route whose
    log writer checks them under the append lock (`Principal.caller`); the first half of authenticate."""
    s = ctx.settings
    signed = await know_kid(ctx, token)
    if signed is None:
        raise InvalidToken("malformed access token")
    kid, claims = verify_access_token(signed, ctx.keys.current(), issuer=s.issuer, audience=s.audience)
    try:
        session_id = uuid.UUID(str(claims["sid"]))
    except ValueError:
        raise InvalidToken("invalid sid claim") from None
    return Principal(str(claims["sub"]), session_id, str(claims["jti"]), kid, claims)


async def check_not_revoked(ctx: AuthContext, who: Principal) -> None:
    """Refuse a verified token that the log's projections say is revoked."""
    rows = await ctx.revocation_reads.rows(who.jti, who.session_id, who.user_id, who.kid)
    if revocation_reason(rows, int(who.claims["iat"])):
        raise InvalidToken("token has been revoked")


async def authenticate(ctx: AuthContext, token: str) -> Principal:
    """Verify one of our access tokens and check the log's projections that it is not revoked."""
    who = await verify(ctx, token)
    await check_not_revoked(ctx, who)
    return who
