"""RFC 7662 introspection: whether an access or refresh token is active now, and what it says."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from auth_service.context import AuthContext
from auth_service.errors import InvalidToken
from auth_service.log.intents import Rotation, decide_rotation
from auth_service.log.queries import refresh_token_with_session
from auth_service.tokens.access import MAX_REFRESH_TOKEN, hash_refresh_token
from auth_service.use_cases.authn import authenticate

INACTIVE: dict[str, Any] = {"active": False}


async def introspect_token(
    conn: AsyncConnection, ctx: AuthContext, token: str, hint: str | None
) -> dict[str, Any]:
    """The introspection response for a token: active with its claims, or inactive for anything else."""
    if hint != "refresh_token":
        try:
            who = await authenticate(ctx, token)
            return {"active": True, "token_type": "access_token", **who.claims}
        except InvalidToken:
            pass
    if len(token) > MAX_REFRESH_TOKEN:
        return dict(INACTIVE)
    return await _introspect_refresh(conn, ctx.settings.refresh_grace_seconds, token)


async def _introspect_refresh(conn: AsyncConnection, grace: float, token: str) -> dict[str, Any]:
    row = await refresh_token_with_session(conn, hash_refresh_token(token))
    now = datetime.now(UTC)
    if (
        row is None
        or row.revoked_at is not None
        or row.expires_at <= now
        # The same rule the token endpoint applies: a token it would answer as reused is not active.
        or decide_rotation(row.rotated_at, now, timedelta(seconds=grace)) is Rotation.REUSE
    ):
        return dict(INACTIVE)
    session_id: uuid.UUID = row.session_id
    return {
        "active": True,
        "token_type": "refresh_token",
        "sub": row.user_id,
        "client_id": row.client_id,
        "sid": str(session_id),
        "exp": int(row.expires_at.timestamp()),
        "iat": int(row.created_at.timestamp()),
    }
