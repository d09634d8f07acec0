"""Authentication: who is calling, from an access token that verifies and is not revoked."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from auth_service import contract as c
from auth_service.context import AuthContext
from auth_service.errors import InvalidToken
from auth_service.queries import revocation_rows
from auth_service.tokens import unverified_kid, verify_access_token


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


async def authenticate(conn: AsyncConnection, ctx: AuthContext, token: str) -> Principal:
    """Verify one of our access tokens and check the log's projections that it is not revoked."""
    s = ctx.settings
    await ctx.keys.know(conn, unverified_kid(token))
    kid, claims = verify_access_token(token, ctx.keys.current(), issuer=s.issuer, audience=s.audience)
    try:
        session_id = uuid.UUID(str(claims["sid"]))
    except ValueError:
        raise InvalidToken("invalid sid claim") from None
    keys = [
        (c.RevocationKind.JTI.value, str(claims["jti"])),
        (c.RevocationKind.SESSION.value, str(session_id)),
        (c.RevocationKind.USER.value, str(claims["sub"])),
        (c.RevocationKind.KEY.value, kid),
        (c.RevocationKind.GLOBAL.value, c.GLOBAL_SUBJECT),
    ]
    if revocation_reason(await revocation_rows(conn, keys), int(claims["iat"])):
        raise InvalidToken("token has been revoked")
    return Principal(str(claims["sub"]), session_id, str(claims["jti"]), kid, claims)
