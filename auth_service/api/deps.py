"""What routes depend on: typed app state, the caller (bearer), the service client (Basic), transaction.

Security that the OpenAPI document declares is enforced by the same object: `CurrentPrincipal` and
`ServiceClient` are the schemes FastAPI documents, and their `__call__` authenticates or raises, so a route
that declares one cannot be reached without credentials that pass. The one exception is logout, the write
path's hot route: it declares the bearer scheme with `BEARER_SECURITY` and calls `signed_principal` first
thing in its body, which saves a dependency's resolution; tests/integration/test_auth_security.py holds
every route that declares a scheme, this one included, to refusing a request without valid credentials.
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
from prometheus_client import CollectorRegistry, Counter
from sqlalchemy.ext.asyncio import AsyncConnection

from auth_service.context import AuthContext
from auth_service.contract.bearer import MAX_HEADER_BYTES, MalformedBearer, parse_bearer
from auth_service.errors import AuthServiceError, BearerError, InvalidClient, MissingToken
from auth_service.use_cases.authn import Principal, authenticate, verify

if TYPE_CHECKING:
    from auth_service.log.listener import LogListener
    from auth_service.relay import Relay
    from auth_service.ssf.deliverer import Deliverer


@dataclass
class AppState:
    """Everything the app holds between requests; set once, read through `app_state()`."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    context: AuthContext | None = None  # set by the lifespan once the engine and keys are up
    relay: Relay | None = None
    ssf: Deliverer | None = None  # the Shared Signals push deliverer, when enabled
    log_listener: LogListener | None = None  # long-poll waiters share its one LISTEN connection
    # Snapshots served to resource instances: a restart storm on per-instance queues shows here, one each.
    snapshots_served: Counter = field(init=False)

    def __post_init__(self) -> None:
        self.snapshots_served = Counter(
            "tokenlife_snapshots_served",
            "Revocation snapshots served to resource instances (GET /v1/revocations).",
            registry=self.registry,
        )


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
    try:
        token = parse_bearer(request.headers.get("authorization"), MAX_HEADER_BYTES)
    except MalformedBearer as exc:
        raise BearerError(str(exc)) from None
    if token is None:
        # RFC 6750 §3.1: no header, or another scheme, means no bearer credentials at all: a bare challenge.
        raise MissingToken("authentication required (Bearer)")
    return token


class _Bearer(OAuth2PasswordBearer):
    """The bearer scheme (the docs' Authorize button logs in through the password grant), enforced."""

    async def __call__(self, request: Request) -> Principal:  # type: ignore[override]
        token = bearer_token(request)
        return await authenticate(context(request), token)


async def signed_principal(request: Request) -> Principal:
    """Logout's caller: verified here (signature, claims), its revocation checked by the log writer under the
    append lock, in the round trip of its append, before the route has any effect or answers. Called in the
    route's body, not as a dependency (each one FastAPI resolves costs a request 12-15 µs, measured in
    process); see the module's docstring."""
    return await verify(context(request), bearer_token(request))


class _Basic(HTTPBasic):
    """HTTP Basic for the registry's confidential clients (client_secret_basic), in constant time."""

    async def __call__(self, request: Request) -> str:  # type: ignore[override]
        header = request.headers.get("authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic" or not encoded or len(header) > MAX_HEADER_BYTES:
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
basic_scheme = _Basic(scheme_name="HTTPBasic")

CurrentPrincipal = Annotated[Principal, Depends(bearer_scheme)]
# The OpenAPI security requirement of bearer_scheme, for a route that calls signed_principal itself (whose
# Principal is not yet checked against the revocations: pass `.caller` to the log writer with its intents).
BEARER_SECURITY: list[dict[str, list[str]]] = [{bearer_scheme.scheme_name: []}]
ServiceClient = Annotated[str, Depends(basic_scheme)]
