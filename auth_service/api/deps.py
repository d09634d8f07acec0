"""What routes depend on: typed app state, the caller (bearer), the service client (Basic), transaction.

Security that the OpenAPI document declares is enforced by the same object: `CurrentPrincipal` and
`ServiceClient` are the schemes FastAPI documents, and their `__call__` authenticates or raises, so a route
that declares one cannot be reached without credentials that pass.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.security import HTTPBasic, OAuth2PasswordBearer
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncConnection

from auth_service.authn import Principal, authenticate, verify
from auth_service.context import AuthContext
from auth_service.errors import AuthServiceError, BearerError, InvalidClient, MissingToken

if TYPE_CHECKING:
    from auth_service.log_listener import LogListener
    from auth_service.relay import Relay

MAX_HEADER = 8192


@dataclass
class AppState:
    """Everything the app holds between requests; set once, read through `app_state()`."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    context: AuthContext | None = None  # set by the lifespan once the engine and keys are up
    relay: Relay | None = None
    log_listener: LogListener | None = None  # long-poll waiters share its one LISTEN connection


def app_state(app: FastAPI) -> AppState:
    """The app's typed state."""
    state: AppState = app.state.tokenlife
    return state


def context(request: Request) -> AuthContext:
    """The app's shared context (the lifespan has started)."""
    ctx = app_state(request.app).context
    assert ctx is not None, "the lifespan sets the context before any request"
    return ctx


async def _context(request: Request) -> AuthContext:
    # Async on purpose: FastAPI runs a plain `def` dependency in its thread pool, a thread hop per request.
    return context(request)


Context = Annotated[AuthContext, Depends(_context)]


@asynccontextmanager
async def transaction(ctx: AuthContext) -> AsyncIterator[AsyncConnection]:
    """One transaction for the request: committed before the handler answers, rolled back on error.

    An error that keeps its writes (a reused refresh token's session revocation) commits before it is raised.
    """
    async with ctx.engine.connect() as conn:
        trans = await conn.begin()
        try:
            yield conn
        except AuthServiceError as exc:
            await (trans.commit() if exc.keeps_writes else trans.rollback())
            raise
        except BaseException:
            await trans.rollback()
            raise
        await trans.commit()


def bearer_token(request: Request) -> str:
    """The token of an `Authorization: Bearer` header (RFC 6750 §2.1)."""
    header = request.headers.get("authorization")
    if header is None:
        raise MissingToken("authentication required")
    if len(header) > MAX_HEADER or not header.isascii():
        raise BearerError("malformed Authorization header")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer":
        # RFC 6750 §3.1: another scheme means no bearer credentials at all, so a bare challenge.
        raise MissingToken("authentication required (Bearer)")
    if not token or " " in token:
        raise BearerError("expected 'Authorization: Bearer <token>'")
    return token


class _Bearer(OAuth2PasswordBearer):
    """The bearer scheme (the docs' Authorize button logs in through the password grant), enforced."""

    async def __call__(self, request: Request) -> Principal:  # type: ignore[override]
        token = bearer_token(request)
        return await authenticate(context(request), token)


class _SignedBearer(OAuth2PasswordBearer):
    """The same bearer scheme for a route that hands the token's revocation check to the log writer, which
    makes it under the append lock in the round trip of its append (logout): verified here (signature,
    claims), refused there if revoked, before the route has any effect or answers."""

    async def __call__(self, request: Request) -> Principal:  # type: ignore[override]
        return await verify(context(request), bearer_token(request))


class _Basic(HTTPBasic):
    """HTTP Basic for the registry's confidential clients (client_secret_basic), in constant time."""

    async def __call__(self, request: Request) -> str:  # type: ignore[override]
        header = request.headers.get("authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic" or not encoded or len(header) > MAX_HEADER:
            raise InvalidClient("service client authentication required (HTTP Basic)")
        try:
            client_id, sep, secret = (
                base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
            )
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise InvalidClient("malformed Basic credentials") from None
        # Checked even without a separator, so every refusal takes the same time.
        if not context(request).settings.client_registry.authenticate(client_id, secret) or not sep:
            raise InvalidClient("unknown service client or wrong secret")
        return client_id


bearer_scheme = _Bearer(tokenUrl="/oauth/token", scheme_name="OAuth2PasswordBearer")
signed_bearer_scheme = _SignedBearer(tokenUrl="/oauth/token", scheme_name="OAuth2PasswordBearer")
basic_scheme = _Basic(scheme_name="HTTPBasic")

CurrentPrincipal = Annotated[Principal, Depends(bearer_scheme)]
# Not yet checked against the revocations: pass `.caller` to the log writer with the route's intents.
SignedPrincipal = Annotated[Principal, Depends(signed_bearer_scheme)]
ServiceClient = Annotated[str, Depends(basic_scheme)]
