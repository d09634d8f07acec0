"""OAuth 2.0 endpoints: token (RFC 6749), revocation (RFC 7009), introspection (RFC 7662)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from auth_service.api.deps import Context, ServiceClient, transaction
from auth_service.api.forms import form, form_body, required
from auth_service.errors import InvalidRequest, UnsupportedGrantType, UnsupportedTokenType
from auth_service.grants import Client, password_grant, refresh_grant
from auth_service.introspection import introspect_token
from auth_service.revoke import revoke_token

router = APIRouter(tags=["oauth"])
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _client(request: Request, ctx: Context, fields: dict[str, str]) -> Client:
    client_id = fields.get("client_id") or ctx.settings.default_client_id
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
async def token(request: Request, ctx: Context) -> Response:
    """RFC 6749 token endpoint; OAuth2PasswordBearer(tokenUrl="/oauth/token") works against it."""
    fields = await form(request)
    grant_type = required(fields, "grant_type")
    client = _client(request, ctx, fields)
    scope = fields.get("scope")
    if grant_type == "password":
        username, password = required(fields, "username"), required(fields, "password")
        async with transaction(ctx) as conn:
            tokens = await password_grant(conn, ctx, username, password, client, scope)
    elif grant_type == "refresh_token":
        refresh_token = required(fields, "refresh_token")
        async with transaction(ctx) as conn:
            tokens = await refresh_grant(conn, ctx, refresh_token, client, scope)
    else:
        raise UnsupportedGrantType(f"grant_type {grant_type[:64]!r} is not supported")
    return JSONResponse(tokens.body(), headers=NO_STORE)


@router.post(
    "/oauth/revoke",
    summary="Revoke an access or refresh token (RFC 7009)",
    openapi_extra=form_body(("token", True), ("token_type_hint", False)),
)
async def revoke(request: Request, ctx: Context) -> Response:
    """Always 200 for a well-formed request, whether or not the token was known (RFC 7009 §2.2)."""
    fields = await form(request)
    hint = fields.get("token_type_hint")
    if hint not in (None, "access_token", "refresh_token"):
        raise UnsupportedTokenType("unknown hint")
    token = required(fields, "token")
    await revoke_token(ctx, token, hint)
    return Response(status_code=200, headers=NO_STORE)


@router.post(
    "/oauth/introspect",
    summary="Introspect a token (RFC 7662), for service clients",
    openapi_extra=form_body(("token", True), ("token_type_hint", False)),
)
async def introspect(request: Request, ctx: Context, _client: ServiceClient) -> Response:
    """Whether a token is active now, with its claims; inactive for anything unknown, expired or revoked."""
    fields = await form(request)
    token = required(fields, "token")
    async with transaction(ctx) as conn:
        body: dict[str, Any] = await introspect_token(conn, ctx, token, fields.get("token_type_hint"))
    return JSONResponse(body, headers=NO_STORE)
