"""OAuth 2.0 endpoints: token (RFC 6749), revocation (RFC 7009), introspection (RFC 7662)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import select

from auth_service.api.common import (
    context,
    form,
    form_body,
    openapi_basic,
    required,
    service_client,
    transaction,
)
from auth_service.errors import InvalidRequest, InvalidToken, OAuthError, UnsupportedGrantType
from auth_service.grants import Client, password_grant, refresh_grant
from auth_service.revoke import authenticate, revoke_token
from auth_service.tables import refresh_tokens, sessions
from auth_service.tokens import hash_refresh_token

router = APIRouter(tags=["oauth"])
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def oauth_error(err: OAuthError) -> JSONResponse:
    """An RFC 6749 §5.2 error response."""
    return JSONResponse(
        {"error": err.error, "error_description": err.description}, status_code=err.status, headers=NO_STORE
    )


def _client(request: Request, fields: dict[str, str]) -> Client:
    client_id = fields.get("client_id") or context(request).settings.default_client_id
    if len(client_id) > 128:
        raise InvalidRequest("client_id is too long")
    agent = request.headers.get("user-agent")
    return Client(
        client_id=client_id,
        user_agent=agent[:512] if agent else None,
        address=request.client.host if request.client else None,
    )


@router.post(
    "/oauth/token",
    summary="Log in or refresh (password and refresh_token grants)",
    openapi_extra=form_body(
        ("grant_type", True),
        ("username", False),
        ("password", False),
        ("refresh_token", False),
        ("scope", False),
        ("client_id", False),
    ),
)
async def token(request: Request) -> Response:
    """RFC 6749 token endpoint; OAuth2PasswordBearer(tokenUrl="/oauth/token") works against it."""
    fields = await form(request)
    grant_type = required(fields, "grant_type")
    ctx = context(request)
    client = _client(request, fields)
    scope = fields.get("scope")
    if grant_type == "password":
        async with transaction(request) as conn:
            tokens = await password_grant(
                conn, ctx, required(fields, "username"), required(fields, "password"), client, scope
            )
    elif grant_type == "refresh_token":
        async with transaction(request) as conn:
            result = await refresh_grant(conn, ctx, required(fields, "refresh_token"), client, scope)
        if isinstance(result, OAuthError):
            return oauth_error(result)  # after the commit: the session's revocation must stick
        tokens = result
    else:
        raise UnsupportedGrantType(f"grant_type {grant_type[:64]!r} is not supported")
    return JSONResponse(tokens.body(), headers=NO_STORE)


@router.post(
    "/oauth/revoke",
    summary="Revoke an access or refresh token (RFC 7009)",
    openapi_extra=form_body(("token", True), ("token_type_hint", False)),
)
async def revoke(request: Request) -> Response:
    """Always 200 for a well-formed request, whether or not the token was known (RFC 7009 §2.2)."""
    fields = await form(request)
    hint = fields.get("token_type_hint")
    if hint not in (None, "access_token", "refresh_token"):
        return JSONResponse({"error": "unsupported_token_type", "error_description": "unknown hint"}, 400)
    async with transaction(request) as conn:
        await revoke_token(conn, context(request), required(fields, "token"), hint)
    return Response(status_code=200, headers=NO_STORE)


@router.post(
    "/oauth/introspect",
    summary="Introspect a token (RFC 7662), for service clients",
    dependencies=[Depends(openapi_basic)],
    openapi_extra=form_body(("token", True), ("token_type_hint", False)),
)
async def introspect(request: Request) -> Response:
    """Whether a token is active now, with its claims; inactive for anything unknown, expired or revoked."""
    service_client(request)
    fields = await form(request)
    token = required(fields, "token")
    hint = fields.get("token_type_hint")
    ctx = context(request)
    async with transaction(request) as conn:
        body: dict[str, Any] = {"active": False}
        if hint != "refresh_token":
            try:
                who = await authenticate(conn, ctx, token)
                body = {"active": True, "token_type": "access_token", **who.claims}
            except InvalidToken:
                pass
        if not body["active"] and len(token) <= 512:
            body = await _introspect_refresh(conn, ctx.settings.refresh_grace_seconds, token)
    return JSONResponse(body, headers=NO_STORE)


async def _introspect_refresh(conn: Any, grace: float, token: str) -> dict[str, Any]:
    row = (
        await conn.execute(
            select(refresh_tokens, sessions.c.user_id, sessions.c.client_id, sessions.c.revoked_at)
            .join(sessions, sessions.c.session_id == refresh_tokens.c.session_id)
            .where(refresh_tokens.c.token_hash == hash_refresh_token(token))
        )
    ).one_or_none()
    now = datetime.now(UTC)
    if (
        row is None
        or row.revoked_at is not None
        or row.expires_at <= now
        or (row.rotated_at is not None and now - row.rotated_at > timedelta(seconds=grace))
    ):
        return {"active": False}
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
