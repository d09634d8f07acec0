"""Ending things: logout scopes, RFC 7009 revocation, ending one session, a user's tokens, password changes.

Every function appends exactly one event per session, token or user it ends, and ending something already
ended appends nothing. The revocation-only paths (logout, RFC 7009, ending a session, revoking a user)
validate outside the lock (token, session lookups on the asyncpg pool) and hand their intents to the
process's group committer (`ctx.writer`, log/writer.py), which decides under the append lock. A password
change writes a credential row too, so it keeps its own transaction inside `log.appending()` (the same lock,
taken before any row lock but the users row; see below).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from auth_service import contract as c
from auth_service.accounts.passwords import check_new_password, hash_password, verify_password
from auth_service.accounts.throttle import password_keys
from auth_service.authn import Principal, check_not_revoked, know_kid
from auth_service.context import AuthContext
from auth_service.db.tables import users
from auth_service.errors import InvalidGrant, InvalidRequest, InvalidToken, NotFound
from auth_service.log import lifetimes, lookups
from auth_service.log.intents import EndSessions, Intent, RevokeToken, RevokeUser
from auth_service.log.store import Appender, appending
from auth_service.tokens.access import hash_refresh_token, verify_access_token

LogoutScope = Literal["session", "others", "all"]
MAX_REFRESH_TOKEN = 512


async def _end_sessions(
    log_: Appender, ctx: AuthContext, user_id: str, session_ids: list[uuid.UUID], reason: str
) -> list[c.Event]:
    now = datetime.now(UTC)
    until = lifetimes.latest_access_expiry(now, ctx.settings.access_token_ttl)
    events: list[c.Event] = [
        c.SessionRevoked(session_id=sid, user_id=user_id, expires_at=until, reason=reason, occurred_at=now)
        for sid in session_ids
    ]
    return await log_.append(events)


async def logout(ctx: AuthContext, who: Principal, scope: LogoutScope) -> list[c.Event]:
    """End this session, the caller's other sessions, or every token of the user (a not-before watermark).

    `who` was verified but not checked against the revocations (deps.signed_principal): the log writer checks
    it under the append lock in the round trip of the append, and refuses it (InvalidToken) if revoked."""
    if scope == "all":
        return await ctx.writer.submit([RevokeUser(who.user_id, "logout_all")], who.caller)
    if scope == "session":
        # The writer ends it if it is still open under the lock.
        targets = [who.session_id]
    else:
        live = await lookups.unrevoked_sessions(
            ctx.pg, who.user_id, datetime.now(UTC), ctx.settings.access_token_ttl
        )
        targets = [sid for sid in live if sid != who.session_id]
    if not targets:
        await check_not_revoked(ctx, who)  # nothing to append: the check alone
        return []
    return await ctx.writer.submit([EndSessions(who.user_id, tuple(targets), f"logout_{scope}")], who.caller)


async def revoke_user(ctx: AuthContext, user_id: str, reason: str) -> list[c.Event]:
    """Revoke every token of the user issued up to now, and every session started before."""
    return await ctx.writer.submit([RevokeUser(user_id, reason)])


async def end_session(ctx: AuthContext, who: Principal, session_id: uuid.UUID) -> None:
    """End one of the caller's own sessions (404 for anyone else's, so ids cannot be probed)."""
    row = await lookups.session_owner(ctx.pg, session_id)
    if row is None or row[0] != who.user_id:
        raise NotFound("no such session")
    if row[1] is None:
        await ctx.writer.submit([EndSessions(who.user_id, (session_id,), "ended_by_user")])


async def revoke_token(ctx: AuthContext, token: str, hint: str | None) -> list[c.Event]:
    """RFC 7009: revoke an access or refresh token; an unknown or invalid token is not an error."""
    order = (
        ["access_token", "refresh_token"] if hint != "refresh_token" else ["refresh_token", "access_token"]
    )
    for kind in order:
        intent = await (
            _revoke_refresh(ctx, token) if kind == "refresh_token" else _revoke_access(ctx, token)
        )
        if intent is not None:
            return await ctx.writer.submit([intent]) if intent else []
    return []


async def _revoke_refresh(ctx: AuthContext, token: str) -> Intent | Literal[False] | None:
    """The intent for a refresh token; None: not one of ours; False: ours, but nothing to do."""
    if len(token) > MAX_REFRESH_TOKEN:
        return None
    row = await lookups.session_of_refresh_token(ctx.pg, hash_refresh_token(token))
    if row is None:
        return None
    session_id, user_id, revoked_at = row
    if revoked_at is not None:
        return False
    return EndSessions(user_id, (session_id,), "refresh_token_revoked")


async def _revoke_access(ctx: AuthContext, token: str) -> Intent | Literal[False] | None:
    """The intent for an access token; None: not one of ours; False: ours, but nothing to do."""
    s = ctx.settings
    signed = await know_kid(ctx, token)
    if signed is None:
        return None
    try:
        _kid, claims = verify_access_token(
            signed, ctx.keys.current(), issuer=s.issuer, audience=s.audience, verify_exp=False
        )
    except InvalidToken:
        return None
    expires_at = datetime.fromtimestamp(int(claims["exp"]), UTC)
    if lifetimes.beyond_every_leeway(expires_at, datetime.now(UTC)):
        return False  # dead already: nothing to tell anyone
    return RevokeToken(
        c.TokenRevoked(
            jti=str(claims["jti"]),
            user_id=str(claims["sub"]),
            session_id=uuid.UUID(str(claims["sid"])),
            expires_at=expires_at,
            reason="revoked",
        )
    )


async def change_password(
    conn: AsyncConnection, ctx: AuthContext, who: Principal, current: str, new: str, address: str | None
) -> list[c.Event]:
    """Change the caller's password (a credential.changed event) and end every other session of theirs (the
    session.revoked events it returns); guesses share login's backoff."""
    try:
        check_new_password(new)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    user = (
        await conn.execute(select(users).where(users.c.user_id == uuid.UUID(who.user_id)).with_for_update())
    ).one_or_none()
    if user is None:
        raise InvalidGrant("current password is wrong")
    keys = password_keys(user.email, address)
    await ctx.throttle.check(conn, datetime.now(UTC), *keys)
    if not await asyncio.to_thread(verify_password, user.password_hash, current):
        await ctx.throttle.failed_alone(ctx.engine, datetime.now(UTC), *keys)
        raise InvalidGrant("current password is wrong")
    await ctx.throttle.succeeded(conn, keys[0])
    new_hash = await asyncio.to_thread(hash_password, new)
    # The users row is locked before the log, the one exception to the lock order, so that argon2 does not
    # run under the append lock: no appending transaction locks a users row after the log, so no deadlock.
    async with appending(conn, lock_timeout_ms=ctx.settings.lock_timeout_ms) as log_:
        await conn.execute(
            update(users)
            .where(users.c.user_id == user.user_id)
            .values(password_hash=new_hash, password_changed_at=datetime.now(UTC))
        )
        # Read on the pool, not `conn`: complete all the same, since every session starts with an append,
        # which waits for the lock this transaction holds.
        live = await lookups.unrevoked_sessions(
            ctx.pg, who.user_id, datetime.now(UTC), ctx.settings.access_token_ttl
        )
        others = [sid for sid in live if sid != who.session_id]
        # Logged first, so a Shared Signals receiver hears of the new credential before the sessions it ends.
        await log_.append([c.CredentialChanged(user_id=who.user_id, reason="password_change")])
        return await _end_sessions(log_, ctx, who.user_id, others, "password_change")
