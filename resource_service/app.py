"""The runnable sample resource service: a user of `Protection` like any other, with a few protected routes.

No `from __future__ import annotations` here: the routes' dependencies are made in `create_app` from its
Protection, and a string annotation would be resolved against this module's globals, where they are not.
"""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, FastAPI, Query, Request, WebSocket
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from resource_service.check.verifier import Principal
from resource_service.protection import Protection, Runtime
from resource_service.settings import ResourceSettings
from resource_service.web.dependency import error_responses
from tracekit import TraceSettings
from tracekit import load as load_tracing

if TYPE_CHECKING:
    from tracekit.tracing import Tracing

__all__ = ["ADMIN_SCOPE", "Runtime", "create_app", "runtime"]

ADMIN_SCOPE = "admin"
# Not traced: probes and scrapes (every protected route is: its server span is what a refusal links to).
UNTRACED = ("/healthz$", "/readyz$", "/metrics$")


def runtime(request: Request | WebSocket) -> Runtime:
    """The app's Runtime (present once the lifespan has started)."""
    found: Runtime = request.app.state.runtime
    return found


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


def create_app(settings: ResourceSettings, tracing: "Tracing | None" = None) -> FastAPI:
    """The sample service; nothing connects until the lifespan starts the feed.

    `tracing`: the process's OpenTelemetry (tracekit.tracing); None: as the OTEL_* variables say (off unless
    they name an exporter or an endpoint). Off, nothing of it is on any request's path."""
    owned = tracing is None
    tracing = tracing or load_tracing(TraceSettings(), "tokenlife-resource")
    tokenlife = Protection(settings, tracing=tracing, owns_tracing=owned)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The sample's own lifespan, run inside tokenlife's: tests and benchmarks read the runtime here.
        app.state.runtime = tokenlife.runtime
        yield

    app = FastAPI(title="tokenlife sample resource service", lifespan=lifespan)
    # The console's origin may call (GET, bearer); the settings give it in dev mode.
    tokenlife.install(app, cors_origins=settings.cors_origins or ())
    any_principal = tokenlife.require()
    admin_principal = tokenlife.require([ADMIN_SCOPE])

    @app.get("/v1/whoami", summary="Who the bearer token speaks for", responses=error_responses())
    async def whoami(principal: Annotated[Principal, Depends(any_principal)]) -> PrincipalView:
        """The verified, unrevoked principal of the request."""
        return _principal_view(principal)

    @app.get(
        "/v1/admin", summary="A route that needs the admin scope", responses=error_responses(scoped=True)
    )
    async def admin(principal: Annotated[Principal, Depends(admin_principal)]) -> AdminView:
        """Only for tokens granted the admin scope."""
        return AdminView(admin=True, **_principal_view(principal).model_dump())

    @app.websocket("/v1/ticks")
    async def ticks(websocket: WebSocket, interval: Annotated[float, _INTERVAL] = 1.0) -> None:
        """A ticking feed over a WebSocket, closed when its token is revoked or expires, or when stale."""

        async def feed(ws: WebSocket, principal: Principal) -> None:
            async for tick in _ticks(interval, principal):
                await ws.send_json(tick)

        await tokenlife.websocket(websocket, feed)

    @app.get(
        "/v1/ticks/events",
        summary="A ticking feed as server-sent events",
        response_class=StreamingResponse,
        responses={
            200: {
                "description": "`tick` events until the token ends; then one `end` event saying why.",
                # One server-sent event, as a client's parser gives it: its name and its data (JSON text).
                "content": {
                    "text/event-stream": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "event": {"type": "string", "enum": ["tick", "end"]},
                                "data": {"type": "string"},
                            },
                            "required": ["data"],
                        }
                    }
                },
            },
            **error_responses(),
        },
    )
    async def tick_events(
        principal: Annotated[Principal, Depends(any_principal)],
        interval: Annotated[float, _INTERVAL] = 1.0,
    ) -> StreamingResponse:
        """Server-sent `tick` events, ended by an `end` event when the token is revoked or expires."""

        async def frames() -> AsyncIterator[bytes]:
            async for tick in _ticks(interval, principal):
                yield f"event: tick\ndata: {json.dumps(tick)}\n\n".encode()

        return StreamingResponse(
            tokenlife.event_stream(principal, frames()),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        """The process answers."""
        return {"status": "ok"}

    app.add_api_route("/readyz", tokenlife.readiness, include_in_schema=False)
    app.add_api_route("/metrics", tokenlife.metrics, include_in_schema=False)
    if tracing is not None:
        tracing.instrument_app(app, UNTRACED)
    return app
