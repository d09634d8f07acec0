"""The client_credentials grant (RFC 6749 §4.4): access tokens for confidential clients acting for
themselves, today the Shared Signals receivers (ssf/), with the SSF scopes they are registered for.

Such a token names the client (`sub` = `client_id`), has no session (`sid`) and is meant for this server
alone: its `aud` is the issuer, not the resource services' audience, so a resource service refuses it on two
counts. It is not logged (no user, no session: no event of the contract fits) and cannot be revoked one by
one; it lives at most `MAX_LIFETIME`, and taking the client out of the registry (or its scope) stops it at
once, since every SSF request looks the client up again (ssf/receivers.py).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import jwt

from auth_service.context import AuthContext
from auth_service.errors import InvalidScope, NoSigningKey, UnauthorizedClient
from auth_service.tokens.access import ACCESS_TOKEN_TYPE

MAX_LIFETIME = 3600  # the CAEP Interoperability Profile's example of a short-lived token: an hour at most


def client_token_audience(issuer: str) -> str:
    """The `aud` of a client_credentials token: this server itself (its SSF management API)."""
    return issuer.rstrip("/")


def granted_scopes(requested: str | None, registered: tuple[str, ...]) -> tuple[str, ...]:
    """The scopes to grant: what was asked for (all registered when absent), within the registered ones."""
    if requested is None or not requested.strip():
        granted = registered
    else:
        asked = requested.split()
        if unknown := [s for s in asked if s not in registered]:
            raise InvalidScope(f"scope {unknown[0][:64]!r} is not one this client may get")
        granted = tuple(dict.fromkeys(asked))
    if not granted:
        raise InvalidScope("this client may get no scope")
    return granted


def issue_client_token(ctx: AuthContext, client_id: str, scope: str | None) -> dict[str, Any]:
    """The token response for an authenticated confidential client (RFC 6749 §4.4.3: no refresh token)."""
    spec = ctx.settings.client_registry.receiver(client_id)
    if spec is None:
        raise UnauthorizedClient(f"client {client_id[:64]!r} may not use the client_credentials grant")
    scopes = granted_scopes(scope, spec.scopes or ())
    key = ctx.keys.current().active
    if key is None:
        raise NoSigningKey("no active signing key: an operator must run `tokenlife keys rotate`")
    now = int(datetime.now(UTC).timestamp())
    lifetime = min(ctx.settings.access_token_ttl, MAX_LIFETIME)
    claims = {
        "iss": ctx.settings.issuer,
        "aud": client_token_audience(ctx.settings.issuer),
        "sub": client_id,
        "client_id": client_id,
        "iat": now,
        "exp": now + lifetime,
        "jti": uuid.uuid4().hex,
        "scope": " ".join(scopes),
    }
    token = jwt.encode(
        claims, key.private_key, algorithm=key.alg, headers={"kid": key.kid, "typ": ACCESS_TOKEN_TYPE}
    )
    return {"access_token": token, "token_type": "Bearer", "expires_in": lifetime, "scope": claims["scope"]}
