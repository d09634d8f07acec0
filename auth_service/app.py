"""The auth service's FastAPI app: create_app(settings), its lifespan, and the one error mapping."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import asyncpg
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from auth_service.accounts import passwords
from auth_service.accounts.backoff import BackoffRule
from auth_service.accounts.throttle import LoginThrottle
from auth_service.api import account, discovery, docs, health, oauth, openapi, service, ssf, stream
from auth_service.api.deps import AppState
from auth_service.api.errors import install_error_handlers
from auth_service.api.middleware import Edge
from auth_service.console.pages import build_router as console_router
from auth_service.context import AuthContext
from auth_service.db.engine import asyncpg_dsn, create_engine
from auth_service.errors import (
    NoSigningKey,
)
from auth_service.log import projections
from auth_service.log.listener import LogListener
from auth_service.log.lookups import keep_session_state
from auth_service.log.writer import LogWriter
from auth_service.metrics import WriterCollector
from auth_service.relay import Relay
from auth_service.relay.metrics import RelayMetrics
from auth_service.settings import AuthSettings
from auth_service.ssf.deliverer import Deliverer
from auth_service.ssf.updates import announcer
from auth_service.tokens import keys as keystore
from auth_service.tokens.keyring import KeyRing
from auth_service.tokens.keys import KeyCache
from looplag import LoopLag
from tracekit import TraceSettings, serving, untraced
from tracekit import load as load_tracing

if TYPE_CHECKING:
    from auth_service.traces import RevocationTraces
    from tracekit.tracing import Tracing

log = logging.getLogger("tokenlife.auth")
PRUNE_EVERY = 60.0


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
        wanted = settings.signing_algorithm
        if settings.env == "dev" and await keystore.ensure_active_key(conn, kek, wanted):
            log.warning(
                "DEV MODE: generated a %s signing key; run `tokenlife keys rotate` in production", wanted
            )
        ring = await keystore.load(conn, kek, settings.access_token_ttl)
    if ring.active is not None and ring.active.alg != wanted:
        log.warning(
            "the active signing key signs %s, TOKENLIFE_SIGNING_ALGORITHM asks for %s: it applies from the"
            " next `tokenlife keys rotate`",
            ring.active.alg,
            wanted,
        )
    if ring.active is None:
        raise NoSigningKey("no active signing key: run `tokenlife keys rotate` once before serving")
    return ring


# Not traced: probes, scrapes, and the long-polls of the log (always held; their events are, from the commit).
UNTRACED = ("/healthz$", "/readyz$", "/metrics$", "/v1/events$")


def create_app(settings: AuthSettings, tracing: Tracing | None = None) -> FastAPI:
    """Build the auth service; nothing connects until the lifespan starts. `tracing`: the process's
    OpenTelemetry (tracekit.tracing); None: as the OTEL_* variables say (off unless they name an exporter)."""
    owned = tracing is None
    tracing = tracing or load_tracing(TraceSettings(), "tokenlife-auth")
    traces: RevocationTraces | None = None
    if tracing is not None:
        from auth_service.traces import RevocationTraces  # OpenTelemetry: imported only when tracing is on

        traces = RevocationTraces(tracing.tracer)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with serving(tracing, owned=owned, asyncpg=True):  # the requests' queries, under their spans
            async with _serving(app):
                yield

    @asynccontextmanager
    async def _serving(app: FastAPI) -> AsyncIterator[None]:
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
            refresh_grace=settings.refresh_grace_seconds,
        )
        writer_metrics = WriterCollector(writer)
        state.registry.register(writer_metrics)
        try:
            # Background loops start with library instrumentation off: each of their queries a root trace.
            with untraced(tracing):
                await listener.start()
            # Hot-path reads (lookups.py) on plain asyncpg; the group committer on a connection of its own.
            pg = await asyncpg.create_pool(
                asyncpg_dsn(settings.database_url), min_size=1, max_size=10, reset=keep_session_state
            )
            with untraced(tracing):
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
            state.context = AuthContext(settings, engine, keys, throttle, pg, writer, traces=traces)

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
                with untraced(tracing):
                    tasks.append(asyncio.create_task(_supervise(name, body, every), name=f"tokenlife-{name}"))
            if settings.relay_enabled:
                # On connections of its own, never the request pool (see docs/architecture.md, the relay).
                relay = Relay.from_settings(settings, metrics=RelayMetrics(state.registry), traces=traces)
                # While it leads, what the writer commits is published before the requests are answered.
                writer.on_commit.append(relay.committed)
                writer.before_batch = relay.keep_up  # and the writes never outrun what it can publish
                with untraced(tracing):
                    await relay.start()
            state.relay = relay
            if traces is not None:
                # First: the positions of traced events are known before the relay's hand-off publishes them.
                writer.on_commit.insert(0, traces.committed)
            if settings.ssf_enabled:
                # The Shared Signals push streams, on the one instance that leads their delivery (ssf/).
                deliverer = Deliverer(
                    settings.database_url,
                    settings.issuer.rstrip("/"),
                    lambda: keys.current().active,
                    listener.changed,
                    announcer(engine, settings.lock_timeout_ms),
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
            state.registry.unregister(writer_metrics)
            if pg is not None:
                await pg.close()
            await listener.stop()
            await engine.dispose()
            await loop_lag.stop()

    state = AppState()
    loop_lag = LoopLag(state.registry)
    # /docs and /redoc come from api/docs.py, with their assets served here rather than from a CDN.
    app = FastAPI(
        title="tokenlife auth service", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None
    )
    app.state.tokenlife = state
    app.include_router(oauth.router)
    app.include_router(account.router)
    app.include_router(discovery.router)
    app.include_router(service.router)
    app.include_router(stream.router)
    app.include_router(ssf.router)
    app.include_router(console_router(settings))
    app.include_router(health.router)
    install_error_handlers(app)
    openapi.install(app)
    docs.install(app)
    app.add_middleware(Edge, tracing=tracing)
    if tracing is not None:
        tracing.instrument_app(app, UNTRACED)
    return app
