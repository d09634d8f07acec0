"""The auth service's FastAPI app: create_app(settings), its lifespan, and the one error mapping."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.exceptions import HTTPException as StarletteHTTPException

from auth_service.accounts import passwords
from auth_service.accounts.backoff import BackoffRule
from auth_service.accounts.throttle import LoginThrottle
from auth_service.api import account, discovery, oauth, openapi, service, ssf, stream
from auth_service.api.deps import AppState, app_state, context
from auth_service.api.middleware import Edge
from auth_service.api.schemas import Health, Readiness
from auth_service.console.pages import build_router as console_router
from auth_service.context import AuthContext
from auth_service.db import errors as db_errors
from auth_service.db.engine import asyncpg_dsn, create_engine
from auth_service.errors import (
    AppendError,
    AuthServiceError,
    BearerError,
    DatabaseUnavailable,
    InsufficientScope,
    InvalidClient,
    OAuthError,
    TooManyAttempts,
    TooManyWaiters,
)
from auth_service.log import projections
from auth_service.log.listener import LogListener
from auth_service.log.lookups import keep_session_state
from auth_service.log.writer import LogWriter
from auth_service.relay import Relay
from auth_service.relay.metrics import RelayMetrics
from auth_service.settings import AuthSettings
from auth_service.ssf.deliverer import Deliverer
from auth_service.tokens import keys as keystore
from auth_service.tokens.keyring import KeyRing
from auth_service.tokens.keys import KeyCache
from looplag import LoopLag

log = logging.getLogger("tokenlife.auth")
REALM = "tokenlife"
PRUNE_EVERY = 60.0


def _quote(value: str) -> str:
    cleaned = "".join(ch for ch in value if 0x20 <= ord(ch) < 0x7F)
    return cleaned.replace("\\", "\\\\").replace('"', '\\"')


def error_response(err: AuthServiceError) -> JSONResponse:
    """The HTTP answer for one of our errors (RFC 6749 §5.2 body; RFC 6750 header for bearer errors)."""
    error = getattr(err, "error", None)
    description = getattr(err, "public_description", err.description)
    body = {"error": getattr(err, "body_error", error), "error_description": description}
    headers = {"Cache-Control": "no-store"}
    if isinstance(err, OAuthError):
        headers["Pragma"] = "no-cache"
    if isinstance(err, BearerError):
        params = [f'realm="{REALM}"']
        if err.error:
            params += [f'error="{err.error}"', f'error_description="{_quote(err.description)}"']
        if isinstance(err, InsufficientScope):
            params.append(f'scope="{_quote(err.scope)}"')
        headers["WWW-Authenticate"] = "Bearer " + ", ".join(params)
    elif isinstance(err, InvalidClient):
        headers["WWW-Authenticate"] = f'Basic realm="{REALM}"'
    elif isinstance(err, TooManyAttempts):
        headers["Retry-After"] = str(err.retry_after)
    elif isinstance(err, AppendError):
        headers["Retry-After"] = "1"
    elif isinstance(err, (TooManyWaiters, DatabaseUnavailable)):
        headers["Retry-After"] = str(err.retry_after)
    return JSONResponse(body, status_code=err.status, headers=headers)


async def _supervise(name: str, body: Callable[[], Awaitable[None]], every: float) -> None:
    """Run `body` every `every` seconds; a crash is logged and the loop goes on."""
    while True:
        try:
            await body()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background task %s failed; retrying in %.0f s", name, every)
        await asyncio.sleep(every)


async def load_keys(settings: AuthSettings, engine: AsyncEngine) -> KeyRing:
    """Load the key ring, creating a first key in dev mode; outside dev a missing key is an error."""
    kek = settings.key_encryption_key.get_secret_value()
    async with engine.begin() as conn:
        if settings.env == "dev" and await keystore.ensure_active_key(conn, kek):
            log.warning("DEV MODE: generated a signing key; run `tokenlife keys rotate` in production")
        ring = await keystore.load(conn, kek, settings.access_token_ttl)
    if ring.active is None:
        raise RuntimeError("no active signing key: run `tokenlife keys rotate` once before serving")
    return ring


def create_app(settings: AuthSettings) -> FastAPI:
    """Build the auth service; nothing connects until the lifespan starts."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.announce()
        engine = create_engine(settings.database_url)
        tasks: list[asyncio.Task[None]] = []
        relay: Relay | None = None
        deliverer: Deliverer | None = None
        listener = LogListener(settings.database_url, max_waiters=settings.long_poll_max_waiters)
        state.log_listener = listener
        loop_lag.start()
        pg: asyncpg.Pool | None = None
        writer = LogWriter(
            asyncpg_dsn(settings.database_url),
            lock_timeout_ms=settings.lock_timeout_ms,
            access_token_ttl=settings.access_token_ttl,
        )
        try:
            await listener.start()
            # Hot-path reads (lookups.py) on plain asyncpg; the group committer on a connection of its own.
            pg = await asyncpg.create_pool(
                asyncpg_dsn(settings.database_url), min_size=1, max_size=10, reset=keep_session_state
            )
            writer.start()
            kek = settings.key_encryption_key.get_secret_value()
            # Made now, in a thread, so the first login of an unknown user costs what every other one does.
            await asyncio.to_thread(passwords.dummy_hash)
            keys = KeyCache(await load_keys(settings, engine), kek, settings.access_token_ttl)
            window, cap = settings.login_failure_window, settings.login_max_backoff
            throttle = LoginThrottle(
                BackoffRule(settings.login_max_failures, window, cap),
                BackoffRule(settings.login_max_failures_per_address, window, cap),
            )
            state.context = AuthContext(settings, engine, keys, throttle, pg, writer)

            async def reload_keys() -> None:
                async with engine.connect() as conn:
                    await keys.reload(conn)

            async def prune() -> None:
                async with engine.begin() as conn:
                    await projections.prune(conn, datetime.now(UTC))
                    await throttle.prune(conn, datetime.now(UTC))

            for name, body, every in (
                ("keys", reload_keys, settings.key_refresh_seconds),
                ("prune", prune, PRUNE_EVERY),
            ):
                # Named, so asyncio's debug mode and task dumps say which one ran long.
                tasks.append(asyncio.create_task(_supervise(name, body, every), name=f"tokenlife-{name}"))
            if settings.relay_enabled:
                # On connections of its own, never the request pool (see docs/architecture.md, the relay).
                relay = Relay.from_settings(settings, metrics=RelayMetrics(state.registry))
                # While it leads, what the writer commits is published before the requests are answered.
                writer.on_commit.append(relay.committed)
                writer.before_batch = relay.keep_up  # and the writes never outrun what it can publish
                await relay.start()
            state.relay = relay
            if settings.ssf_enabled:
                # The Shared Signals push streams, on the one instance that leads their delivery (ssf/).
                deliverer = Deliverer(
                    settings.database_url,
                    settings.issuer.rstrip("/"),
                    lambda: keys.current().active,
                    listener.changed,
                    push_timeout=settings.ssf_push_timeout,
                    max_backoff=settings.ssf_push_max_backoff,
                    retention=settings.ssf_retention,
                    leader_retry_interval=settings.relay_leader_retry_interval,
                    lease_timeout=settings.relay_lease_timeout,
                )
                await deliverer.start()
            state.ssf = deliverer
            yield
        finally:
            if deliverer is not None:
                await deliverer.stop()
            if relay is not None:
                await relay.stop()
            for task in reversed(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await writer.stop()
            if pg is not None:
                await pg.close()
            await listener.stop()
            await engine.dispose()
            await loop_lag.stop()

    state = AppState()
    loop_lag = LoopLag(state.registry)
    app = FastAPI(title="tokenlife auth service", version="0.1.0", lifespan=lifespan)
    app.state.tokenlife = state
    app.include_router(oauth.router)
    app.include_router(account.router)
    app.include_router(discovery.router)
    app.include_router(service.router)
    app.include_router(stream.router)
    app.include_router(ssf.router)
    app.include_router(console_router(settings))
    _health(app)
    _errors(app)
    openapi.install(app)
    app.add_middleware(Edge)
    return app


def _health(app: FastAPI) -> None:
    @app.get("/healthz", tags=["health"], responses={200: {"model": Health}})
    async def healthz() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get(
        "/readyz",
        tags=["health"],
        responses={
            200: {"model": Readiness},
            503: {"model": Readiness, "description": "Not ready: the reason says what is missing."},
        },
    )
    async def readyz(request: Request) -> Response:
        ctx = context(request)
        try:
            async with ctx.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:
            return JSONResponse({"status": "unavailable", "reason": f"database: {type(exc).__name__}"}, 503)
        if ctx.keys.current().active is None:
            return JSONResponse({"status": "unavailable", "reason": "no active signing key"}, 503)
        relay = app_state(request.app).relay
        if relay is not None and not relay.ready:
            return JSONResponse({"status": "unavailable", "reason": "the relay loop is not running"}, 503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", tags=["health"], include_in_schema=False)
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(app_state(request.app).registry), media_type=CONTENT_TYPE_LATEST)


def _errors(app: FastAPI) -> None:
    @app.exception_handler(AuthServiceError)
    async def ours(request: Request, exc: AuthServiceError) -> Response:
        if isinstance(exc, AppendError):
            log.warning("append failed: %s", exc)
        return error_response(exc)

    async def database_down(request: Request, exc: Exception) -> Response:
        err = db_errors.translate(exc)
        if err is None:
            raise exc  # not an outage: a bug, and it shows as one
        log.warning("database unavailable on %s: %s: %s", request.url.path, type(exc).__name__, exc)
        return error_response(err)

    for kind in db_errors.THIRD_PARTY:
        app.add_exception_handler(kind, database_down)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": "invalid_request", "error_description": problems[:500]}, 400)

    @app.exception_handler(StarletteHTTPException)
    async def http(request: Request, exc: StarletteHTTPException) -> Response:
        return JSONResponse(
            {
                "error": "not_found" if exc.status_code == 404 else "invalid_request",
                "error_description": str(exc.detail),
            },
            exc.status_code,
            headers=exc.headers,
        )
