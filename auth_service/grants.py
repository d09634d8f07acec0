"""The token endpoint's grants: password (login) and refresh_token (rotation with reuse detection).

Both check what needs no database first, then enter `log.appending()` before any row lock (the lock order
rule is in log/store.py), and decide with the pure rules of tokens/grant_rules.py.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from auth_service import contract as c
from auth_service.accounts.passwords import verify_password
from auth_service.accounts.throttle import password_keys
from auth_service.context import AuthContext
from auth_service.db.tables import refresh_tokens, sessions, users
from auth_service.errors import (
    InvalidGrant,
    InvalidRequest,
    NoSigningKey,
    RefreshTokenReused,
)
from auth_service.log.lifetimes import latest_access_expiry
from auth_service.log.queries import current_watermark
from auth_service.log.store import appending
from auth_service.tokens import successors
from auth_service.tokens.access import AccessToken, hash_refresh_token, new_refresh_token, sign_access_token
from auth_service.tokens.grant_rules import Rotation, decide_rotation, grant_scope

BAD_CREDENTIALS = "invalid username or password"


@dataclass(frozen=True)
class Client:
    """Who is asking: the OAuth client id and what the request says about the device."""

    client_id: str
    user_agent: str | None
    address: str | None
    scopes: tuple[str, ...] = ()  # the scopes this client may get (already within the server's)


@dataclass(frozen=True)
class Tokens:
    """A successful token response (RFC 6749 §5.1)."""

    access: AccessToken
    refresh_token: str
    expires_in: int

    def body(self) -> dict[str, Any]:
        """The JSON body."""
        body: dict[str, Any] = {
            "access_token": self.access.token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "refresh_token": self.refresh_token,
        }
        if self.access.scope:
            body["scope"] = self.access.scope
        return body


async def _issue(
    conn: AsyncConnection,
    ctx: AuthContext,
    *,
    user_id: str,
    session_id: uuid.UUID,
    client_id: str,
    scope: str,
    now: datetime,
) -> AccessToken:
    key = ctx.keys.current().active
    if key is None:
        raise NoSigningKey("no active signing key: an operator must run `tokenlife keys rotate`")
    s = ctx.settings
    return sign_access_token(
        key,
        issuer=s.issuer,
        audience=s.audience,
        subject=user_id,
        session_id=session_id,
        client_id=client_id,
        scope=scope,
        ttl=s.access_token_ttl,
        now=now,
        not_before=await current_watermark(conn, user_id),
    )


async def _store_refresh_token(
    conn: AsyncConnection, session_id: uuid.UUID, generation: int, now: datetime, expires_at: datetime
) -> str:
    token = new_refresh_token()
    await conn.execute(
        insert(refresh_tokens).values(
            token_hash=hash_refresh_token(token),
            session_id=session_id,
            generation=generation,
            created_at=now,
            expires_at=expires_at,
        )
    )
    return token


async def password_grant(
    conn: AsyncConnection, ctx: AuthContext, username: str, password: str, client: Client, scope: str | None
) -> Tokens:
    """Log in: check the password, start a session, issue the first access and refresh tokens."""
    email = username.strip().lower()
    keys = password_keys(email, client.address)
    await ctx.throttle.check(conn, datetime.now(UTC), *keys)
    user = (await conn.execute(select(users).where(users.c.email == email))).one_or_none()
    # argon2 takes tens of milliseconds of CPU: keep it off the event loop. An unknown user is checked against
    # a dummy hash, so both failures cost the same and answer the same.
    ok = await asyncio.to_thread(verify_password, user.password_hash if user else None, password)
    if user is None or not ok or user.disabled:
        await ctx.throttle.failed_alone(ctx.engine, datetime.now(UTC), *keys)
        raise InvalidGrant(BAD_CREDENTIALS)
    await ctx.throttle.succeeded(conn, keys[0])
    granted = grant_scope(scope, user.scopes, client.scopes)

    now = datetime.now(UTC)
    async with appending(conn, lock_timeout_ms=ctx.settings.lock_timeout_ms) as log_:
        session_id = uuid.uuid4()
        session_expires = now + timedelta(seconds=ctx.settings.refresh_token_ttl)
        refresh = await _store_refresh_token(conn, session_id, 1, now, session_expires)
        user_id = str(user.user_id)
        access = await _issue(
            conn,
            ctx,
            user_id=user_id,
            session_id=session_id,
            client_id=client.client_id,
            scope=granted,
            now=now,
        )
        await log_.append(
            [
                c.SessionStarted(
                    user_id=user_id,
                    session_id=session_id,
                    client_id=client.client_id,
                    user_agent=client.user_agent,
                    client_address=client.address,
                    expires_at=session_expires,
                    occurred_at=now,
                ),
                _issued(access, user_id, session_id, "login", now),
            ]
        )
    return Tokens(access, refresh, ctx.settings.access_token_ttl)


def _issued(
    access: AccessToken, user_id: str, session_id: uuid.UUID, cause: str, now: datetime
) -> c.TokenIssued:
    return c.TokenIssued(
        user_id=user_id,
        session_id=session_id,
        jti=access.jti,
        kid=access.kid,
        issued_at=access.issued_at,
        expires_at=access.expires_at,
        cause="login" if cause == "login" else "refresh",
        occurred_at=now,
    )


async def refresh_grant(
    conn: AsyncConnection, ctx: AuthContext, refresh_token: str, client: Client, scope: str | None
) -> Tokens:
    """Rotate a refresh token. A reuse raises RefreshTokenReused, whose session revocation is committed."""
    if not refresh_token or len(refresh_token) > 512:
        raise InvalidRequest("refresh_token is missing or malformed")
    now = datetime.now(UTC)
    async with appending(conn, lock_timeout_ms=ctx.settings.lock_timeout_ms) as log_:
        row = (
            await conn.execute(
                select(refresh_tokens)
                .where(refresh_tokens.c.token_hash == hash_refresh_token(refresh_token))
                .with_for_update()
            )
        ).one_or_none()
        if row is None:
            raise InvalidGrant("unknown refresh token")
        session = (
            await conn.execute(
                select(sessions).where(sessions.c.session_id == row.session_id).with_for_update()
            )
        ).one_or_none()
        if session is None or session.revoked_at is not None:
            raise InvalidGrant("the session has ended")
        if row.expires_at <= now:
            raise InvalidGrant("refresh token expired")
        user = (
            await conn.execute(select(users).where(users.c.user_id == uuid.UUID(session.user_id)))
        ).one_or_none()
        if user is None or user.disabled:
            raise InvalidGrant("the account is disabled")

        decision = decide_rotation(row.rotated_at, now, timedelta(seconds=ctx.settings.refresh_grace_seconds))
        if decision is Rotation.REUSE:
            await log_.append(
                [
                    c.SessionRevoked(
                        session_id=session.session_id,
                        user_id=session.user_id,
                        reason="refresh_token_reuse",
                        expires_at=latest_access_expiry(now, ctx.settings.access_token_ttl),
                        occurred_at=now,
                    )
                ]
            )
            raise RefreshTokenReused("refresh token was already used; the session is revoked")
        if session.client_id != client.client_id:
            # RFC 6749 §10.4: a refresh token is bound to the client it was issued to.
            raise InvalidGrant("the refresh token was issued to another client")
        granted = grant_scope(scope, user.scopes, client.scopes)
        kek = ctx.settings.key_encryption_key.get_secret_value()
        if decision is Rotation.CONCURRENT:
            # Rotated moments ago (another tab, or a replay): the very answer the rotation gave, never a
            # sibling, so one refresh token never becomes many.
            kept = await successors.load(conn, kek, row.token_hash, now)
            if kept is None:
                raise InvalidGrant("refresh token was already rotated")
            left = max(0, int((kept.access.expires_at - now).total_seconds()))
            return Tokens(kept.access, kept.refresh_token, left)
        await conn.execute(
            update(refresh_tokens).where(refresh_tokens.c.token_hash == row.token_hash).values(rotated_at=now)
        )
        refresh = await _store_refresh_token(
            conn, session.session_id, row.generation + 1, now, row.expires_at
        )
        access = await _issue(
            conn,
            ctx,
            user_id=session.user_id,
            session_id=session.session_id,
            client_id=session.client_id,
            scope=granted,
            now=now,
        )
        await log_.append([_issued(access, session.user_id, session.session_id, "refresh", now)])
        grace = timedelta(seconds=ctx.settings.refresh_grace_seconds)
        await successors.store(
            conn, kek, row.token_hash, successors.Successor(access, refresh), until=now + grace, now=now
        )
    return Tokens(access, refresh, ctx.settings.access_token_ttl)
