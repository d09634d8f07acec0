"""Ending things: logout scopes, RFC 7009 revocation, ending one session, a user's tokens, password changes.

Every function appends exactly one event per session, token or user it ends, and ending something already
ended appends nothing. The revocation-only paths (logout, RFC 7009, ending a session, revoking a user)
validate outside the lock (token, session lookups on the asyncpg pool) and hand their intents to the
process's group committer (`ctx.writer`, log/writer.py), which decides under the append lock. So does a
password change: argon2 runs before it is queued, and the writer stores the new hash and ends the user's
other sessions in one batch's transaction.

With tracing on (`ctx.traces`), each append is a commit span under the request's, and its context is kept for
the relay's publish and the events API (traces.py); off, `_submit` is the writer's submit and nothing more.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from auth_service import contract as c
from auth_service.accounts.passwords import check_new_password, hash_password, verify_password
from auth_service.accounts.throttle import password_keys
from auth_service.context import AuthContext
from auth_service.db.tables import users
from auth_service.errors import InvalidGrant, InvalidRequest, InvalidToken, NotFound
from auth_service.log import lifetimes, lookups
from auth_service.log.intents import Caller, ChangePassword, EndSessions, Intent, RevokeToken, RevokeUser
from auth_service.tokens.access import MAX_REFRESH_TOKEN, hash_refresh_token, verify_access_token
from auth_service.use_cases.authn import Principal, check_not_revoked, know_kid

LogoutScope = Literal["session", "others", "all"]


async def _submit(ctx: AuthContext, intents: list[Intent], caller: Caller | None = None) -> list[c.Event]:
    """The writer's submit, inside a commit span when tracing is on."""
    traces = ctx.traces
    if traces is None:
        return await ctx.writer.submit(intents, caller)
    with traces.appending(intents) as appended:
        events = await ctx.writer.submit(intents, caller)
        appended(events)
        return events


async def logout(ctx: AuthContext, who: Principal, scope: LogoutScope) -> list[c.Event]:
    """End this session, the caller's other sessions, or every token of the user (a not-before watermark).

    `who` was verified but not checked against the revocations (deps.signed_principal): the log writer checks
    it under the append lock in the round trip of the append, and refuses it (InvalidToken) if revoked."""
    if scope == "all":
        return await _submit(ctx, [RevokeUser(who.user_id, "logout_all")], who.caller)
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
    return await _submit(ctx, [EndSessions(who.user_id, tuple(targets), f"logout_{scope}")], who.caller)


async def revoke_user(ctx: AuthContext, user_id: str, reason: str) -> list[c.Event]:
    """Revoke every token of the user issued up to now, and every session started before."""
    return await _submit(ctx, [RevokeUser(user_id, reason)])


async def end_session(ctx: AuthContext, who: Principal, session_id: uuid.UUID) -> None:
    """End one of the caller's own sessions (404 for anyone else's, so ids cannot be probed)."""
    row = await lookups.session_owner(ctx.pg, session_id)
    if row is None or row[0] != who.user_id:
        raise NotFound("no such session")
    if row[1] is None:
        await _submit(ctx, [EndSessions(who.user_id, (session_id,), "ended_by_user")])


async def revoke_token(ctx: AuthContext, token: str, hint: str | None, client_id: str) -> list[c.Event]:
    """RFC 7009: revoke an access or refresh token issued to `client_id`; an unknown or invalid token, or one
    issued to another client (§2.1: a client revokes only its own), revokes nothing and is not an error."""
    order = (
        ["access_token", "refresh_token"] if hint != "refresh_token" else ["refresh_token", "access_token"]
    )
    for kind in order:
        intent = await (
            _revoke_refresh(ctx, token, client_id)
            if kind == "refresh_token"
            else _revoke_access(ctx, token, client_id)
        )
        if intent is not None:
            return await _submit(ctx, [intent]) if intent else []
    return []


async def _revoke_refresh(ctx: AuthContext, token: str, client_id: str) -> Intent | Literal[False] | None:
    """The intent for a refresh token; None: not one of ours; False: ours, but nothing to do."""
    if len(token) > MAX_REFRESH_TOKEN:
        return None
    row = await lookups.session_of_refresh_token(ctx.pg, hash_refresh_token(token))
    if row is None:
        return None
    session_id, user_id, revoked_at, issued_to = row
    if revoked_at is not None or issued_to != client_id:
        return False
    return EndSessions(user_id, (session_id,), "refresh_token_revoked")


async def _revoke_access(ctx: AuthContext, token: str, client_id: str) -> Intent | Literal[False] | None:
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
    if claims.get("client_id") != client_id:
        return False  # another client's token: not this one's to revoke (RFC 7009 §2.1)
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
    user = (await conn.execute(select(users).where(users.c.user_id == uuid.UUID(who.user_id)))).one_or_none()
    if user is None:
        raise InvalidGrant("current password is wrong")
    keys = password_keys(user.email, address)
    await ctx.throttle.check(conn, datetime.now(UTC), *keys)
    if not await asyncio.to_thread(verify_password, user.password_hash, current):
        await ctx.throttle.failed_alone(ctx.engine, datetime.now(UTC), *keys)
        raise InvalidGrant("current password is wrong")
    await ctx.throttle.succeeded(conn, keys[0])
    new_hash = await asyncio.to_thread(hash_password, new)
    # The caller's token is checked under the lock too: a password change by a token revoked meanwhile
    # changes nothing. Two changes at once both stand, in the order the writer takes them.
    change = ChangePassword(who.user_id, new_hash, who.session_id, datetime.now(UTC))
    return await _submit(ctx, [change], who.caller)
