"""Ending things: logout scopes, RFC 7009 revocation, ending one session, a user's tokens, password changes.

Each function runs in the caller's transaction, takes the append lock first (see grants.py for why), and
appends exactly one event per session, token or user it ends. Ending something already ended appends nothing.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from auth_service import contract as c
from auth_service.context import AuthContext
from auth_service.errors import InvalidGrant, InvalidRequest, InvalidToken, NotFound
from auth_service.grants import current_watermark
from auth_service.log import append, append_lock
from auth_service.passwords import check_new_password, hash_password, verify_password
from auth_service.tables import refresh_tokens, revocations, sessions, users
from auth_service.tokens import hash_refresh_token, unverified_kid, verify_access_token, whole_second_floor

LogoutScope = Literal["session", "others", "all"]


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
    rows = await conn.execute(
        select(revocations.c.kind, revocations.c.subject, revocations.c.not_before).where(
            tuple_(revocations.c.kind, revocations.c.subject).in_(keys)
        )
    )
    if revocation_reason([(r.kind, r.subject, r.not_before) for r in rows], int(claims["iat"])):
        raise InvalidToken("token has been revoked")
    return Principal(str(claims["sub"]), session_id, str(claims["jti"]), kid, claims)


def _until(ctx: AuthContext, now: datetime) -> datetime:
    # The latest exp of any access token issued up to now.
    return now + timedelta(seconds=ctx.settings.access_token_ttl + 1)


async def _end_sessions(
    conn: AsyncConnection, ctx: AuthContext, user_id: str, session_ids: list[uuid.UUID], reason: str
) -> list[c.Event]:
    now = datetime.now(UTC)
    events: list[c.Event] = [
        c.SessionRevoked(
            session_id=sid, user_id=user_id, expires_at=_until(ctx, now), reason=reason, occurred_at=now
        )
        for sid in session_ids
    ]
    return await append(conn, events, lock_timeout_ms=ctx.settings.lock_timeout_ms)


async def _unrevoked_sessions(conn: AsyncConnection, ctx: AuthContext, user_id: str) -> list[uuid.UUID]:
    # Not only sessions whose refresh token is alive: an access token from a refresh just before the
    # session expired lives up to access_token_ttl longer, and must be revocable too.
    alive_after = datetime.now(UTC) - timedelta(seconds=ctx.settings.access_token_ttl + 1)
    rows = await conn.execute(
        select(sessions.c.session_id)
        .where(sessions.c.user_id == user_id, sessions.c.revoked_at.is_(None))
        .where(sessions.c.expires_at > alive_after)
        .order_by(sessions.c.created_at)
    )
    return [r.session_id for r in rows]


async def logout(
    conn: AsyncConnection, ctx: AuthContext, who: Principal, scope: LogoutScope
) -> list[c.Event]:
    """End this session, the caller's other sessions, or every token of the user (a not-before watermark)."""
    await append_lock(conn, lock_timeout_ms=ctx.settings.lock_timeout_ms)
    if scope == "all":
        return await revoke_user(conn, ctx, who.user_id, "logout_all")
    live = await _unrevoked_sessions(conn, ctx, who.user_id)
    if scope == "session":
        targets = [sid for sid in live if sid == who.session_id]
    else:
        targets = [sid for sid in live if sid != who.session_id]
    return await _end_sessions(conn, ctx, who.user_id, targets, f"logout_{scope}")


async def revoke_user(conn: AsyncConnection, ctx: AuthContext, user_id: str, reason: str) -> list[c.Event]:
    """Revoke every token of the user issued up to now, and every session started before."""
    await append_lock(conn, lock_timeout_ms=ctx.settings.lock_timeout_ms)
    now = datetime.now(UTC)
    # Every token issued so far has iat <= max(this second, an earlier watermark it was lifted to), because
    # issuing takes the append lock we now hold; one second past that covers them all (iat < not_before).
    earlier = await current_watermark(conn, user_id)
    not_before = max(whole_second_floor(now), earlier or whole_second_floor(now)) + timedelta(seconds=1)
    event = c.UserRevoked(
        user_id=user_id,
        not_before=not_before,
        expires_at=_until(ctx, not_before),
        reason=reason,
        occurred_at=now,
    )
    return await append(conn, [event], lock_timeout_ms=ctx.settings.lock_timeout_ms)


async def end_session(conn: AsyncConnection, ctx: AuthContext, who: Principal, session_id: uuid.UUID) -> None:
    """End one of the caller's own sessions (404 for anyone else's, so ids cannot be probed)."""
    await append_lock(conn, lock_timeout_ms=ctx.settings.lock_timeout_ms)
    row = (await conn.execute(select(sessions).where(sessions.c.session_id == session_id))).one_or_none()
    if row is None or row.user_id != who.user_id:
        raise NotFound("no such session")
    if row.revoked_at is None:
        await _end_sessions(conn, ctx, who.user_id, [session_id], "ended_by_user")


async def revoke_token(
    conn: AsyncConnection, ctx: AuthContext, token: str, hint: str | None
) -> list[c.Event]:
    """RFC 7009: revoke an access or refresh token; an unknown or invalid token is not an error."""
    await append_lock(conn, lock_timeout_ms=ctx.settings.lock_timeout_ms)
    order = (
        ["access_token", "refresh_token"] if hint != "refresh_token" else ["refresh_token", "access_token"]
    )
    for kind in order:
        events = await (
            _revoke_refresh(conn, ctx, token) if kind == "refresh_token" else _revoke_access(conn, ctx, token)
        )
        if events is not None:
            return events
    return []


async def _revoke_refresh(conn: AsyncConnection, ctx: AuthContext, token: str) -> list[c.Event] | None:
    if len(token) > 512:
        return None
    row = (
        await conn.execute(
            select(sessions)
            .join(refresh_tokens, refresh_tokens.c.session_id == sessions.c.session_id)
            .where(refresh_tokens.c.token_hash == hash_refresh_token(token))
        )
    ).one_or_none()
    if row is None:
        return None
    if row.revoked_at is not None:
        return []
    return await _end_sessions(conn, ctx, row.user_id, [row.session_id], "refresh_token_revoked")


async def _revoke_access(conn: AsyncConnection, ctx: AuthContext, token: str) -> list[c.Event] | None:
    s = ctx.settings
    await ctx.keys.know(conn, unverified_kid(token))
    try:
        _kid, claims = verify_access_token(
            token, ctx.keys.current(), issuer=s.issuer, audience=s.audience, verify_exp=False
        )
    except InvalidToken:
        return None
    expires_at = datetime.fromtimestamp(int(claims["exp"]), UTC)
    if expires_at < datetime.now(UTC) - timedelta(seconds=60):
        return []  # dead already: nothing to tell anyone
    event = c.TokenRevoked(
        jti=str(claims["jti"]),
        user_id=str(claims["sub"]),
        session_id=uuid.UUID(str(claims["sid"])),
        expires_at=expires_at,
        reason="revoked",
    )
    return await append(conn, [event], lock_timeout_ms=s.lock_timeout_ms)


async def change_password(
    conn: AsyncConnection, ctx: AuthContext, who: Principal, current: str, new: str
) -> list[c.Event]:
    """Change the caller's password and end every other session of theirs."""
    try:
        check_new_password(new)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    user = (
        await conn.execute(select(users).where(users.c.user_id == uuid.UUID(who.user_id)).with_for_update())
    ).one_or_none()
    if user is None or not await asyncio.to_thread(verify_password, user.password_hash, current):
        raise InvalidGrant("current password is wrong")
    new_hash = await asyncio.to_thread(hash_password, new)
    await append_lock(conn, lock_timeout_ms=ctx.settings.lock_timeout_ms)
    await conn.execute(
        update(users)
        .where(users.c.user_id == user.user_id)
        .values(password_hash=new_hash, password_changed_at=datetime.now(UTC))
    )
    others = [sid for sid in await _unrevoked_sessions(conn, ctx, who.user_id) if sid != who.session_id]
    return await _end_sessions(conn, ctx, who.user_id, others, "password_change")
