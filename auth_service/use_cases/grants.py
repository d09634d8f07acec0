"""The token endpoint's grants: password (login) and refresh_token (rotation with reuse detection).

Both check what needs no lock first (the credentials, the refresh token's state read on the pool), refuse bad
input there at no cost to the log, then prepare what is slow (a new refresh token, the access token signed,
for a rotation its answer sealed for the grace window) and hand the log writer one intent (log/intents.py:
Login, Rotate). The writer decides under the append lock, in one batch with other requests, whether the
preparation still holds: a refresh token rotated meanwhile gets the answer its rotation kept, one presented
after its grace window ends the session, and a token prepared below a watermark set meanwhile is prepared
again. Nothing slow runs while the lock is held.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from auth_service import contract as c
from auth_service.accounts.passwords import verify_password
from auth_service.accounts.throttle import password_keys
from auth_service.context import AuthContext
from auth_service.errors import (
    AppendError,
    InvalidGrant,
    InvalidRequest,
    NoSigningKey,
    RefreshTokenReused,
)
from auth_service.log import lookups
from auth_service.log.intents import (
    Decision,
    Login,
    NewRefreshToken,
    Prepared,
    Rotate,
    Rotation,
    Verdict,
    decide_rotation,
)
from auth_service.tokens import successors
from auth_service.tokens.access import (
    MAX_REFRESH_TOKEN,
    AccessToken,
    hash_refresh_token,
    new_refresh_token,
    sign_access_token,
)
from auth_service.tokens.grant_rules import grant_scope

BAD_CREDENTIALS = "invalid username or password"
# A prepared token found below a watermark set meanwhile is prepared again; this many times at most.
PREPARE_ATTEMPTS = 3


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


def _sign(
    ctx: AuthContext,
    *,
    user_id: str,
    session_id: uuid.UUID,
    client_id: str,
    scope: str,
    now: datetime,
    watermark: datetime | None,
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
        not_before=watermark,
    )


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


async def _until_signed_fresh(prepare: Callable[[], Awaitable[Decision]]) -> Decision:
    """Prepare and submit until the decision does not ask for a token signed above a newer watermark."""
    for _ in range(PREPARE_ATTEMPTS):
        decision = await prepare()
        if decision.verdict is not Verdict.RESIGN:
            return decision
    raise AppendError("the user's tokens were revoked while this one was being issued; retry")


async def password_grant(
    ctx: AuthContext, username: str, password: str, client: Client, scope: str | None
) -> Tokens:
    """Log in: check the password, start a session, issue the first access and refresh tokens.

    No transaction of its own, as a refresh: its reads are one query on the pool (the user, the throttle's
    failures on record, the watermark), its writes the log writer's, and a failure is counted in a
    transaction of its own."""
    email = username.strip().lower()
    keys = password_keys(email, client.address)
    state = await lookups.login_state(ctx.pg, email, list(keys))
    columns = (state[name] or () for name in ("keys", "failures", "first_at", "last_at"))
    records = zip(*columns, strict=True)
    recorded = ctx.throttle.check_records(records, datetime.now(UTC))
    # argon2 takes tens of milliseconds of CPU: keep it off the event loop. An unknown user is checked against
    # a dummy hash, so both failures cost the same and answer the same.
    known = state["user_id"] is not None
    ok = await asyncio.to_thread(verify_password, state["password_hash"] if known else None, password)
    if not known or not ok or state["disabled"]:
        await ctx.throttle.failed_alone(ctx.engine, datetime.now(UTC), *keys)
        raise InvalidGrant(BAD_CREDENTIALS)
    if keys[0] in recorded:  # a failure recorded since is kept: as if it came after this success
        await ctx.throttle.succeeded_alone(ctx.engine, keys[0])
    granted = grant_scope(scope, state["scopes"], client.scopes)
    user_id = str(state["user_id"])
    ttl = ctx.settings.refresh_token_ttl
    answer: list[Tokens] = []
    first_watermark: list[datetime | None] = [state["watermark"]]

    async def prepare() -> Decision:
        now = datetime.now(UTC)
        session_id = uuid.uuid4()
        refresh = new_refresh_token()
        access = _sign(
            ctx,
            user_id=user_id,
            session_id=session_id,
            client_id=client.client_id,
            scope=granted,
            now=now,
            # The one read with the user's row first; read again if a watermark set meanwhile asks for it.
            watermark=first_watermark.pop() if first_watermark else await lookups.watermark(ctx.pg, user_id),
        )
        started = c.SessionStarted(
            user_id=user_id,
            session_id=session_id,
            client_id=client.client_id,
            user_agent=client.user_agent,
            client_address=client.address,
            expires_at=now + timedelta(seconds=ttl),
            occurred_at=now,
        )
        stored = NewRefreshToken(hash_refresh_token(refresh), session_id, 1, now, started.expires_at)
        answer[:] = [Tokens(access, refresh, ctx.settings.access_token_ttl)]
        issued = _issued(access, user_id, session_id, "login", now)
        return await ctx.writer.decide([Login(started, issued, stored)])

    await _until_signed_fresh(prepare)
    return answer[0]


async def refresh_grant(ctx: AuthContext, refresh_token: str, client: Client, scope: str | None) -> Tokens:
    """Rotate a refresh token. A reuse raises RefreshTokenReused, whose session revocation is committed."""
    if not refresh_token or len(refresh_token) > MAX_REFRESH_TOKEN:
        raise InvalidRequest("refresh_token is missing or malformed")
    parent = hash_refresh_token(refresh_token)
    row = await lookups.refresh_state(ctx.pg, parent)
    now = datetime.now(UTC)
    if row is None:
        raise InvalidGrant("unknown refresh token")
    if row["revoked_at"] is not None:
        raise InvalidGrant("the session has ended")
    if row["expires_at"] <= now:
        raise InvalidGrant("refresh token expired")
    if row["disabled"] is None or row["disabled"]:
        raise InvalidGrant("the account is disabled")
    session_id, user_id = row["session_id"], row["user_id"]
    grace = timedelta(seconds=ctx.settings.refresh_grace_seconds)
    rotation = decide_rotation(row["rotated_at"], now, grace)
    if rotation is Rotation.REUSE:
        # Stolen or replayed: the writer ends the session, under the lock, if it is still open.
        decision = await ctx.writer.decide([Rotate(parent, session_id, user_id, None)])
        raise _refusal(decision)
    if row["client_id"] != client.client_id:
        # RFC 6749 §10.4: a refresh token is bound to the client it was issued to.
        raise InvalidGrant("the refresh token was issued to another client")
    kek = ctx.settings.key_encryption_key.get_secret_value()
    if rotation is Rotation.CONCURRENT:
        # Rotated moments ago (another tab, or a replay): the very answer the rotation gave, never a
        # sibling, so one refresh token never becomes many. Read as committed: no lock needed.
        sealed = await lookups.kept_answer(ctx.pg, parent, now)
        if sealed is None:
            raise InvalidGrant("refresh token was already rotated")
        return _kept(successors.unseal(kek, parent, sealed), now)
    granted = grant_scope(scope, row["scopes"], client.scopes)

    async def prepare() -> Decision:
        at = datetime.now(UTC)
        refresh = new_refresh_token()
        access = _sign(
            ctx,
            user_id=user_id,
            session_id=session_id,
            client_id=row["client_id"],
            scope=granted,
            now=at,
            watermark=row["watermark"],
        )
        answer = successors.Successor(access, refresh)
        stored = NewRefreshToken(
            hash_refresh_token(refresh), session_id, row["generation"] + 1, at, row["expires_at"]
        )
        prepared = Prepared(
            _issued(access, user_id, session_id, "refresh", at),
            stored,
            successors.seal(kek, parent, answer),
            answer,
        )
        return await ctx.writer.decide([Rotate(parent, session_id, user_id, prepared)])

    decision = await _until_signed_fresh(prepare)
    match decision.verdict:
        case Verdict.ROTATED:
            own = decision_answer(decision, kek, parent)
            return Tokens(own.access, own.refresh_token, ctx.settings.access_token_ttl)
        case Verdict.CONCURRENT:
            return _kept(decision_answer(decision, kek, parent), datetime.now(UTC))
    raise _refusal(decision)


def decision_answer(decision: Decision, kek: str, parent: bytes) -> successors.Successor:
    """The answer a rotation decision gives: this request's own, an earlier one of its batch, or one kept."""
    answer = decision.answer
    if isinstance(answer, bytes):
        return successors.unseal(kek, parent, answer)
    assert isinstance(answer, Prepared)
    assert isinstance(answer.answer, successors.Successor)
    return answer.answer


def _kept(kept: successors.Successor, now: datetime) -> Tokens:
    left = max(0, int((kept.access.expires_at - now).total_seconds()))
    return Tokens(kept.access, kept.refresh_token, left)


def _refusal(decision: Decision) -> Exception:
    match decision.verdict:
        case Verdict.REUSED:
            return RefreshTokenReused("refresh token was already used; the session is revoked")
        case Verdict.ROTATED_AWAY:
            return InvalidGrant("refresh token was already rotated")
    return InvalidGrant("the session has ended")
