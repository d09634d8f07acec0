"""Discovery: the JWKS and the authorization server metadata (RFC 8414).

There is no OpenID configuration: this server issues no ID tokens and has no authorization endpoint, so an
OpenID Provider document (which requires both) could not be true.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from auth_service.accounts.clients import GRANT_TYPES
from auth_service.api.deps import context
from auth_service.api.schemas import JWKS, ServerMetadata
from auth_service.settings import AuthSettings

router = APIRouter(tags=["discovery"])


@router.get(
    "/.well-known/jwks.json",
    summary="Public keys that verify live access tokens",
    responses={200: {"model": JWKS}},
)
async def jwks(request: Request) -> Response:
    """The active key and every retired key a live token may still need; never a revoked key."""
    return JSONResponse(context(request).keys.current().jwks, headers={"Cache-Control": "public, max-age=60"})


def server_metadata(settings: AuthSettings) -> dict[str, Any]:
    """RFC 8414 metadata: exactly the endpoints, grants, client auth methods and scopes there are."""
    issuer = settings.issuer.rstrip("/")
    return {
        "issuer": issuer,
        "token_endpoint": f"{issuer}/oauth/token",
        "jwks_uri": f"{issuer}/.well-known/jwks.json",
        "revocation_endpoint": f"{issuer}/oauth/revoke",
        "introspection_endpoint": f"{issuer}/oauth/introspect",
        "scopes_supported": list(settings.scopes_supported),
        # RFC 8414 §2 requires the member; there is no authorization endpoint, so no response type at all.
        "response_types_supported": [],
        "grant_types_supported": list(GRANT_TYPES),
        # Public clients at the token and revocation endpoints; confidential ones (SSF receivers at the token
        # endpoint, services at introspection) with Basic.
        "token_endpoint_auth_methods_supported": ["none", "client_secret_basic"],
        "revocation_endpoint_auth_methods_supported": ["none"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic"],
    }


@router.get(
    "/.well-known/oauth-authorization-server",
    summary="Authorization server metadata (RFC 8414)",
    responses={200: {"model": ServerMetadata}},
)
async def metadata(request: Request) -> Response:
    """Built from the configured issuer and clients (never from the request's Host)."""
    return JSONResponse(server_metadata(context(request).settings))
