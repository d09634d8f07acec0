"""One object that protects a service of your own: configured once, installed into its app in one call.

    tokenlife = Protection(ResourceSettings())    # or Protection(auth_url=..., service_client_id=...)
    app = FastAPI(lifespan=own_lifespan)           # the app keeps its routes and its lifespan
    tokenlife.install(app)    # tokenlife's lifespan around the app's, the answer gate, the RFC 6750 errors
    Reader = Annotated[Principal, Depends(tokenlife.require(["read"]))]
    app.add_api_route("/readyz", tokenlife.readiness, include_in_schema=False)  # where the app wants it

Nothing connects when it is built: the lifespan (or `running()`, for a framework with its own start-up
hooks) builds the feed, the verifier and the watch of open connections, and stops them in reverse order.
`require` dependencies refuse to answer a request the answer gate did not see (a RuntimeError: the app
forgot `install`), because without the gate a paused instance could answer 200 past the bound B. A plain
ASGI app uses `middleware(app)` instead, which checks every request and gates its own answers.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request, WebSocket
from prometheus_client.exposition import choose_encoder
from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp

from resource_service.check.guard import Guard
from resource_service.check.verifier import Principal
from resource_service.runtime import Runtime, build_runtime
from resource_service.settings import ResourceSettings
from resource_service.web.answer_gate import GATE_KEY, AnswerGate
from resource_service.web.dependency import (
    DEFAULT_REALM,
    PrincipalDependency,
    RevocationMiddleware,
    error_responses,
    install_error_handler,
)
from resource_service.web.live import watched_events
from resource_service.web.websocket import WebSocketHandler, serve_websocket
from tracekit import serving

if TYPE_CHECKING:
    from tracekit.tracing import Tracing

# Principal, ResourceSettings and error_responses too, so that an app imports what it uses from one place.
__all__ = [
    "GateMissing",
    "Lifespan",
    "NotRunning",
    "Principal",
    "Protection",
    "ResourceSettings",
    "Runtime",
    "build_runtime",
    "error_responses",
]

Lifespan = Callable[[Any], AbstractAsyncContextManager[Any]]


class NotRunning(RuntimeError):
    """Asked for the runtime while tokenlife's lifespan is not running (the app was not `install`ed)."""


class GateMissing(RuntimeError):
    """A `require` dependency ran in a request the answer gate did not see (the app was not `install`ed)."""


def _retry_after(settings: ResourceSettings) -> int:
    return max(1, math.ceil(settings.poll_interval))


class _GatedDependency(PrincipalDependency):
    """`require_principal`, refusing to run where the answer gate cannot judge the answer."""

    async def __call__(self, request: Request) -> Principal:
        """The checked Principal of this request; GateMissing if the app has no answer gate."""
        if not request.scope.get("state", {}).get(GATE_KEY):
            raise GateMissing(
                "tokenlife: this request did not pass through the answer gate, so a success could be written "
                "after the revocation state went stale; call Protection.install(app)"
            )
        return await super().__call__(request)


class _ComposedLifespan:
    """tokenlife's lifespan with the app's own inside it: tokenlife starts first and stops last."""

    def __init__(self, protection: Protection, own: Lifespan | None) -> None:
        self.protection = protection
        self._own = own

    @asynccontextmanager
    async def __call__(self, app: Any) -> AsyncIterator[Any]:
        async with self.protection.running():
            if self._own is None:
                yield None
            else:
                async with self._own(app) as state:
                    yield state  # the app's lifespan state (Starlette's request.state), passed through


class Protection:
    """A resource service's protection by tokenlife: lifespan, dependencies, gate, readiness and metrics."""

    def __init__(
        self,
        settings: ResourceSettings | None = None,
        /,
        *,
        realm: str = DEFAULT_REALM,
        tracing: Tracing | None = None,
        owns_tracing: bool = False,
        **options: Any,
    ) -> None:
        if settings is not None and options:
            raise TypeError("pass either ResourceSettings or settings as keyword arguments, not both")
        # Keyword arguments win over TOKENLIFE_* variables, which fill in the rest (pydantic-settings).
        self.settings = settings if settings is not None else ResourceSettings(**options)
        self.realm = realm
        # OpenTelemetry (tracekit), or None: off. Owned: shut down (its spans flushed) when tokenlife stops.
        self._tracing, self._owns_tracing = tracing, owns_tracing
        self._runtime: Runtime | None = None

    @property
    def runtime(self) -> Runtime:
        """The running feed, guard and registry; NotRunning outside the lifespan."""
        if self._runtime is None:
            raise NotRunning(
                "tokenlife is not running: Protection.install(app) runs it with the app's lifespan "
                "(or use Protection.lifespan / Protection.running)"
            )
        return self._runtime

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Runtime]:
        """Start the feed, the open-connection watch and the loop-lag probe; stop them in reverse order."""
        if self._runtime is not None:
            raise RuntimeError("tokenlife is already running: install it or use its lifespan, not both")
        self.settings.announce()
        rt = build_runtime(self.settings, self._tracing)
        async with AsyncExitStack() as stack:
            stack.enter_context(serving(self._tracing, owned=self._owns_tracing))
            stack.push_async_callback(rt.client.aclose)
            rt.loop_lag.start()
            stack.push_async_callback(rt.loop_lag.stop)
            await rt.feed.start()
            stack.push_async_callback(rt.feed.stop)
            rt.live.start()
            stack.push_async_callback(rt.live.stop)
            self._runtime = rt
            try:
                yield rt
            finally:
                self._runtime = None

    def lifespan(self, own: Lifespan | None = None) -> Lifespan:
        """A lifespan for FastAPI(lifespan=...) or Starlette that runs tokenlife around `own`."""
        return _ComposedLifespan(self, own)

    def install(self, app: Starlette, *, cors_origins: Iterable[str] = ()) -> None:
        """Protect an app in one call: tokenlife's lifespan around the app's own, the answer gate, and the
        RFC 6750 error handler; CORS for `cors_origins` (GET, bearer) only when given. No routes."""
        own = app.router.lifespan_context
        if not (isinstance(own, _ComposedLifespan) and own.protection is self):
            app.router.lifespan_context = self.lifespan(own)
        app.add_middleware(AnswerGate, realm=self.realm)
        origins = list(cors_origins)
        if origins:
            # Outside the gate: a success turned into a 503 at answer time still carries the CORS headers.
            app.add_middleware(
                CORSMiddleware,
                allow_origins=origins,
                allow_methods=["GET"],
                allow_headers=["Authorization"],
                expose_headers=["WWW-Authenticate", "Retry-After"],
                max_age=600,
            )
        if isinstance(app, FastAPI):
            install_error_handler(app)

    def require(self, scopes: Iterable[str] = ()) -> PrincipalDependency:
        """A FastAPI dependency: the request's Principal holding `scopes`, or 401, 400, 403 or 503."""
        return _GatedDependency(self._request_guard, scopes, self.realm)

    async def websocket(
        self, websocket: WebSocket, handler: WebSocketHandler, *, scopes: Iterable[str] = ()
    ) -> None:
        """Authenticate the socket, run `handler(websocket, principal)` while its token holds; close it."""
        rt = self.runtime
        await serve_websocket(websocket, rt.live, rt.guard, handler, scopes=scopes, realm=self.realm)

    def event_stream(self, principal: Principal, source: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        """An event-stream body that ends with an `end` event when the principal's token does."""
        return watched_events(self.runtime.live, principal, source)

    def middleware(
        self, app: ASGIApp, *, exclude_paths: Iterable[str] = (), required_scopes: Iterable[str] = ()
    ) -> RevocationMiddleware:
        """For any ASGI app: every request outside `exclude_paths` needs a good token, answers gated."""
        return RevocationMiddleware(
            app,
            self._guard,
            exclude_paths=exclude_paths,
            required_scopes=required_scopes,
            realm=self.realm,
        )

    async def readiness(self, request: Request) -> Response:
        """An endpoint: 200 once caught up with the log (and fresh, when failing closed); 503 otherwise."""
        if self._runtime is None:
            not_running = {"ready": False, "running": False}
            return JSONResponse(not_running, status_code=503, headers=self._not_ready())
        rt, settings = self._runtime, self.settings
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
        headers = {"Cache-Control": "no-store"} | ({} if ready else self._not_ready())
        return JSONResponse(body, status_code=200 if ready else 503, headers=headers)

    async def metrics(self, request: Request) -> Response:
        """An endpoint: this instance's metrics, Prometheus text or OpenMetrics when asked (it carries the
        delay histogram's exemplars, which link to traces)."""
        encode, media_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encode(self.runtime.registry), media_type=media_type)

    def _not_ready(self) -> dict[str, str]:
        return {"Cache-Control": "no-store", "Retry-After": str(_retry_after(self.settings))}

    def _guard(self) -> Guard:
        return self.runtime.guard

    def _request_guard(self, request: Request) -> Guard:
        return self.runtime.guard
