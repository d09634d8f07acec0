"""Discovery: the JWKS and the authorization server metadata (RFC 8414, with the OpenID fields that apply)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from auth_service.api.deps import context
from auth_service.keyring import ALGORITHM

router = APIRouter(tags=["discovery"])


@router.get("/.well-known/jwks.json", summary="Public keys that verify live access tokens")
async def jwks(request: Request) -> Response:
    """The active key and every retired key a live token may still need; never a revoked key."""
    return JSONResponse(context(request).keys.current().jwks, headers={"Cache-Control": "public, max-age=60"})


@router.get("/.well-known/openid-configuration", summary="Authorization server metadata")
@router.get("/.well-known/oauth-authorization-server", include_in_schema=False)
async def metadata(request: Request) -> Response:
    """Endpoints and algorithms, built from the configured issuer (never from the request's Host)."""
    issuer = context(request).settings.issuer.rstrip("/")
    return JSONResponse(
        {
            "issuer": issuer,
            "jwks_uri": f"{issuer}/.well-known/jwks.json",
            "token_endpoint": f"{issuer}/oauth/token",
            "revocation_endpoint": f"{issuer}/oauth/revoke",
            "introspection_endpoint": f"{issuer}/oauth/introspect",
            "grant_types_supported": ["password", "refresh_token"],
            "response_types_supported": ["token"],
            "token_endpoint_auth_methods_supported": ["none"],
            "revocation_endpoint_auth_methods_supported": ["none"],
            "introspection_endpoint_auth_methods_supported": ["client_secret_basic"],
            "id_token_signing_alg_values_supported": [ALGORITHM],
            "access_token_signing_alg_values_supported": [ALGORITHM],
        }
    )
