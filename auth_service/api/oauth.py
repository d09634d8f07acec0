"""OAuth 2.0 endpoints: token (RFC 6749), revocation (RFC 7009), introspection (RFC 7662)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from auth_service.accounts.clients import GRANT_TYPES, MAX_CLIENT_ID, ClientSpec, GrantType
from auth_service.api.deps import Context, ServiceClient, basic_scheme, transaction
from auth_service.api.forms import form, form_body, form_schema, required, text
from auth_service.api.openapi import errors
from auth_service.api.schemas import IntrospectionResponse, TokenResponse
from auth_service.errors import InvalidClient, InvalidRequest, UnauthorizedClient, UnsupportedGrantType
from auth_service.tokens.access import MAX_REFRESH_TOKEN
from auth_service.use_cases.client_grant import issue_client_token
from auth_service.use_cases.grants import Client, password_grant, refresh_grant
from auth_service.use_cases.introspection import introspect_token
from auth_service.use_cases.revoke import revoke_token

router = APIRouter(tags=["oauth"])
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _public_client(ctx: Context, fields: dict[str, str]) -> tuple[str, ClientSpec]:
    """The registered public client the request names (or the configured default)."""
    client_id = fields.get("client_id") or None
    if client_id is not None and len(client_id) > MAX_CLIENT_ID:
        raise InvalidRequest("client_id is too long")
    found = ctx.settings.client_registry.public_client(client_id)
    if found is None:
        raise InvalidClient("unknown client" if client_id else "client_id is required")
    return found


def _client(request: Request, ctx: Context, fields: dict[str, str], grant_type: GrantType) -> Client:
    """The registered public client the request names (or the configured default), allowed this grant."""
    name, spec = _public_client(ctx, fields)
    if grant_type not in spec.grant_types:
        raise UnauthorizedClient(f"client {name!r} may not use the {grant_type} grant")
    supported = ctx.settings.scopes_supported
    agent = request.headers.get("user-agent")
    return Client(
        client_id=name,
        user_agent=agent[:512] if agent else None,
        address=request.client.host if request.client else None,
        scopes=supported if spec.scopes is None else tuple(s for s in supported if s in spec.scopes),
    )


_CLIENT = text(max_length=MAX_CLIENT_ID, description="A registered public client; empty: the default one.")
_SCOPE = text(description="Space-separated scopes; absent or empty: every scope the user and client may get.")


@router.post(
    "/oauth/token",
    summary="Log in, refresh, or get a receiver's token (password, refresh_token, client_credentials grants)",
    openapi_extra=form_body(
        form_schema(
            ("grant_type", "username", "password"),
            grant_type=text(enum=["password"]),
            username=text(1),
            password=text(1),
            scope=_SCOPE,
            client_id=_CLIENT,
        ),
        form_schema(
            ("grant_type", "refresh_token"),
            grant_type=text(enum=["refresh_token"]),
            refresh_token=text(1, MAX_REFRESH_TOKEN),
            scope=_SCOPE,
            client_id=_CLIENT,
        ),
        form_schema(
            ("grant_type",),
            grant_type=text(
                enum=["client_credentials"],
                description="A confidential client (a Shared Signals receiver) authenticated with HTTP Basic"
                " (RFC 6749 §4.4, §2.3.1).",
            ),
            scope=text(description="Space-separated scopes; absent or empty: all the client may get."),
        ),
    ),
    responses={200: {"model": TokenResponse}, **errors(400, 401, 413, 429, 503)},
)
async def token(request: Request, ctx: Context) -> Response:
    """RFC 6749 token endpoint; OAuth2PasswordBearer(tokenUrl="/oauth/token") works against it."""
    fields = await form(request)
    grant_type = required(fields, "grant_type")
    if grant_type not in GRANT_TYPES:
        raise UnsupportedGrantType(f"grant_type {grant_type[:64]!r} is not supported")
    if grant_type == "client_credentials":  # a confidential client, with HTTP Basic (client_grant.py)
        body = issue_client_token(ctx, await basic_scheme(request), fields.get("scope"))
        return JSONResponse(body, headers=NO_STORE)
    client = _client(request, ctx, fields, grant_type)
    scope = fields.get("scope")
    if grant_type == "password":
        username, password = required(fields, "username"), required(fields, "password")
        # No transaction of its own, as a refresh: its reads are on the pool, its writes the log writer's.
        tokens = await password_grant(ctx, username, password, client, scope)
    else:
        tokens = await refresh_grant(ctx, required(fields, "refresh_token"), client, scope)
    return JSONResponse(tokens.body(), headers=NO_STORE)


_TOKEN = form_schema(
    ("token",),
    token=text(1, None, description="Any length up to the body limit; an invalid token is not an error."),
    token_type_hint=text(description="access_token or refresh_token orders the search; others are ignored."),
)
_REVOKE = form_schema(
    ("token",),
    token=text(1, None, description="Any length up to the body limit; an invalid token is not an error."),
    token_type_hint=text(description="access_token or refresh_token orders the search; others are ignored."),
    client_id=text(
        max_length=MAX_CLIENT_ID,
        description="The public client revoking; empty: the default one. Only its own tokens are revoked.",
    ),
)


@router.post(
    "/oauth/revoke",
    summary="Revoke an access or refresh token (RFC 7009)",
    openapi_extra=form_body(_REVOKE),
    response_class=Response,  # the 200 has no body
    responses={
        200: {"description": "Revoked, or nothing to revoke (RFC 7009 §2.2)"},
        **errors(400, 401, 413, 503),
    },
)
async def revoke(request: Request, ctx: Context) -> Response:
    """200 for a well-formed request from a known client, whether or not the token was known (RFC 7009 §2.2).

    A client revokes only the tokens issued to it (§2.1): another client's token is left alone, and the
    answer is the same 200, so a revocation request cannot tell a client whose tokens it was sent."""
    fields = await form(request, unbounded=("token",))
    # RFC 7009 §2.1: the hint only orders the search; an unknown one is ignored and every type searched.
    hint = fields.get("token_type_hint")
    token = required(fields, "token")
    client_id, _ = _public_client(ctx, fields)
    await revoke_token(ctx, token, hint, client_id)
    return Response(status_code=200, headers=NO_STORE)


@router.post(
    "/oauth/introspect",
    summary="Introspect a token (RFC 7662), for service clients",
    openapi_extra=form_body(_TOKEN),
    responses={200: {"model": IntrospectionResponse}, **errors(400, 401, 413)},
)
async def introspect(request: Request, ctx: Context, _client: ServiceClient) -> Response:
    """Whether a token is active now, with its claims; inactive for anything unknown, expired or revoked."""
    fields = await form(request, unbounded=("token",))
    token = required(fields, "token")
    async with transaction(ctx) as conn:
        body: dict[str, Any] = await introspect_token(conn, ctx, token, fields.get("token_type_hint"))
    return JSONResponse(body, headers=NO_STORE)
