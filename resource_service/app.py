"""The runnable sample resource service: protected routes, readiness that follows the feed, and /metrics."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, FastAPI, Query, Request, WebSocket
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from pydantic import BaseModel

from looplag import LoopLag
from resource_service.check.guard import Guard
from resource_service.check.keys import JwksKeySource
from resource_service.check.state import RevocationState
from resource_service.check.verifier import Principal, TokenVerifier
from resource_service.feed.auth_client import AuthClient
from resource_service.feed.loop import Feed
from resource_service.settings import ResourceSettings
from resource_service.web.answer_gate import AnswerGate
from resource_service.web.auth_metrics import AuthLinkCollector
from resource_service.web.dependency import error_responses, install_error_handler, require_principal
from resource_service.web.live import LiveConnections, watched_events
from resource_service.web.metrics import build_registry
from resource_service.web.websocket import serve_websocket
from tracekit import TraceSettings, serving
from tracekit import load as load_tracing

if TYPE_CHECKING:
    from tracekit.tracing import Tracing

__all__ = ["ADMIN_SCOPE", "Runtime", "create_app"]

ADMIN_SCOPE = "admin"
# Not traced: probes and scrapes (every protected route is: its server span is what a refusal links to).
UNTRACED = ("/healthz$", "/readyz$", "/metrics$")


@dataclass(frozen=True, slots=True)
class Runtime:
    """What the lifespan builds and the routes use."""

    settings: ResourceSettings
    client: AuthClient
    feed: Feed
    guard: Guard
    registry: CollectorRegistry
    loop_lag: LoopLag
    live: LiveConnections


def _build(settings: ResourceSettings, tracing: Tracing | None) -> Runtime:
    client = AuthClient(
        settings.auth_urls,
        settings.service_client_id,
        settings.service_client_secret.get_secret_value(),
        timeout=settings.http_timeout,
    )
    # An entry must outlive the verifier's leeway on exp, or a revoked token could be accepted again in it.
    state = RevocationState(leeway=settings.leeway + 30.0)
    keys = JwksKeySource(client.jwks, min_interval=settings.jwks_min_interval)
    verifier = TokenVerifier(
        settings.issuer, settings.audience, keys, algorithms=settings.algorithms, leeway=settings.leeway
    )
    feed = Feed(settings, state, client)
    if tracing is not None:
        from resource_service.feed.traces import FeedTraces

        feed.traces = FeedTraces(tracing.tracer, settings.exchange)
    guard = Guard(
        verifier,
        state,
        feed.freshness,
        policy=settings.stale_policy,
        introspect=client.introspect,
        retry_after=max(1, math.ceil(settings.poll_interval)),
        fresh_until=feed.tracker,
        complete_since=lambda: feed.complete_since,
        on_revoked=None if feed.traces is None else feed.traces.refused,
    )
    live = LiveConnections(guard, state, tick=min(0.25, settings.max_staleness / 8), fresh_until=feed.tracker)
    registry = build_registry(feed, guard, live)
    registry.register(AuthLinkCollector(client))
    return Runtime(settings, client, feed, guard, registry, LoopLag(registry), live)


def runtime(request: Request | WebSocket) -> Runtime:
    """The app's Runtime (present once the lifespan has started)."""
    found: Runtime = request.app.state.runtime
    return found


def _guard(request: Request) -> Guard:
    return runtime(request).guard


# At module level: the routes' string annotations (PEP 563) are resolved against this module's globals.
_any_principal = require_principal(_guard)
_admin_principal = require_principal(_guard, [ADMIN_SCOPE])


class PrincipalView(BaseModel):
    """Who a token speaks for, as the sample routes answer it."""

    sub: str
    sid: str
    jti: str
    scopes: list[str]
    client_id: str | None


class AdminView(PrincipalView):
    """The admin route's answer."""

    admin: bool


def _principal_view(principal: Principal) -> PrincipalView:
    return PrincipalView(
        sub=principal.sub,
        sid=principal.sid,
        jti=principal.jti,
        scopes=sorted(principal.scopes),
        client_id=principal.client_id,
    )


def _tick(n: int, principal: Principal) -> dict[str, object]:
    return {"tick": n, "at": time.time(), "sub": principal.sub, "sid": principal.sid}


async def _ticks(interval: float, principal: Principal) -> AsyncIterator[dict[str, object]]:
    n = 0
    while True:
        n += 1
        yield _tick(n, principal)
        await asyncio.sleep(interval)


_INTERVAL = Query(ge=0.05, le=60.0, description="Seconds between two ticks.")


def create_app(settings: ResourceSettings, tracing: Tracing | None = None) -> FastAPI:
    """The sample service; nothing connects until the lifespan starts the feed.

    `tracing`: the process's OpenTelemetry (tracekit.tracing); None: as the OTEL_* variables say (off unless
    they name an exporter or an endpoint). Off, nothing of it is on any request's path."""
    owned = tracing is None
    tracing = tracing or load_tracing(TraceSettings(), "tokenlife-resource")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.announce()
        rt = _build(settings, tracing)
        app.state.runtime = rt
        rt.loop_lag.start()
        await rt.feed.start()
        rt.live.start()
        try:
            with serving(tracing, owned=owned):
                yield
        finally:
            await rt.live.stop()
            await rt.feed.stop()
            await rt.client.aclose()
            await rt.loop_lag.stop()

    app = FastAPI(title="tokenlife sample resource service", lifespan=lifespan)
    # Inside CORS: a success turned into a 503 at answer time still carries the CORS headers.
    app.add_middleware(AnswerGate)
    if settings.cors_origins:
        # Pages of these origins (the auth service's console) may call with a bearer token; never cookies.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET"],
            allow_headers=["Authorization"],
            expose_headers=["WWW-Authenticate", "Retry-After"],
            max_age=600,
        )

    install_error_handler(app)

    @app.get("/v1/whoami", summary="Who the bearer token speaks for", responses=error_responses())
    async def whoami(principal: Annotated[Principal, Depends(_any_principal)]) -> PrincipalView:
        """The verified, unrevoked principal of the request."""
        return _principal_view(principal)

    @app.get(
        "/v1/admin", summary="A route that needs the admin scope", responses=error_responses(scoped=True)
    )
    async def admin(principal: Annotated[Principal, Depends(_admin_principal)]) -> AdminView:
        """Only for tokens granted the admin scope."""
        return AdminView(admin=True, **_principal_view(principal).model_dump())

    @app.websocket("/v1/ticks")
    async def ticks(websocket: WebSocket, interval: Annotated[float, _INTERVAL] = 1.0) -> None:
        """A ticking feed over a WebSocket, closed when its token is revoked or expires, or when stale."""

        async def feed(ws: WebSocket, principal: Principal) -> None:
            async for tick in _ticks(interval, principal):
                await ws.send_json(tick)

        rt = runtime(websocket)
        await serve_websocket(websocket, rt.live, rt.guard, feed)

    @app.get(
        "/v1/ticks/events",
        summary="A ticking feed as server-sent events",
        response_class=StreamingResponse,
        responses={
            200: {
                "description": "`tick` events until the token ends; then one `end` event saying why.",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            **error_responses(),
        },
    )
    async def tick_events(
        request: Request,
        principal: Annotated[Principal, Depends(_any_principal)],
        interval: Annotated[float, _INTERVAL] = 1.0,
    ) -> StreamingResponse:
        """Server-sent `tick` events, ended by an `end` event when the token is revoked or expires."""

        async def frames() -> AsyncIterator[bytes]:
            async for tick in _ticks(interval, principal):
                yield f"event: tick\ndata: {json.dumps(tick)}\n\n".encode()

        return StreamingResponse(
            watched_events(runtime(request).live, principal, frames()),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        """The process answers."""
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> Response:
        """200 once caught up with the log, and while fresh when failing closed; 503 otherwise."""
        rt = runtime(request)
        feed = rt.feed
        fresh = feed.freshness() == "fresh"
        ready = feed.caught_up and (fresh or settings.stale_policy != "fail_closed")
        staleness = feed.staleness()
        body = {
            "ready": ready,
            "caught_up": feed.caught_up,
            "fresh": fresh,
            "broker_live": feed.live,
            "transport": feed.transport,
            "applied_position": feed.state.applied_position,
            "head_position": max(feed.head, feed.state.applied_position),
            "staleness_seconds": None if math.isinf(staleness) else round(staleness, 3),
            "max_staleness_seconds": settings.max_staleness,
            "auth_url": rt.client.current_url,
        }
        headers = {"Cache-Control": "no-store"}
        if not ready:
            headers["Retry-After"] = str(max(1, math.ceil(settings.poll_interval)))
        return JSONResponse(body, status_code=200 if ready else 503, headers=headers)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        """Prometheus text format, or OpenMetrics when asked (it carries the delay histogram's exemplars)."""
        encode, media_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encode(runtime(request).registry), media_type=media_type)

    if tracing is not None:
        tracing.instrument_app(app, UNTRACED)
    return app
