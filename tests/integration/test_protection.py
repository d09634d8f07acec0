"""Protection in apps of one's own, served by uvicorn, against a real auth service (long-poll, no broker):
a FastAPI app that keeps its routes and its lifespan, and a plain Starlette app protected by the middleware.

No `from __future__ import annotations`: the routes' dependencies are made per test, from its Protection.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import httpx
import pytest
import uvicorn
from fastapi import Depends, FastAPI, Request
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from resource_service.protection import NotRunning, Principal, Protection
from tests.conftest import add_user, free_port, running_auth_server
from tests.integration.test_feed import DEADLINE, eventually, login, logout, resource_settings

pytestmark = pytest.mark.integration


@asynccontextmanager
async def serving(app: ASGIApp) -> AsyncIterator[httpx.AsyncClient]:
    """The app under uvicorn on a free loopback port (lifespan and all); a client of it."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            yield http
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, DEADLINE)


async def _is(http: httpx.AsyncClient, path: str, status: int, headers: dict[str, str] | None = None) -> bool:
    with contextlib.suppress(httpx.TransportError):
        return (await http.get(path, headers=headers)).status_code == status
    return False


def orders_app(tokenlife: Protection, events: list[str]) -> FastAPI:
    """An app of one's own: its own lifespan and state, a public route, two routes with different scopes."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        # tokenlife starts first, so the app's own start-up may already use it.
        events.append(f"own start, auth at {tokenlife.runtime.client.current_url}")
        yield {"orders": ["o-1", "o-2"]}
        events.append("own stop")

    app = FastAPI(lifespan=lifespan)
    reader = tokenlife.require(["read"])
    writer = tokenlife.require(["write"])

    @app.get("/orders/count")
    async def count(request: Request) -> dict[str, int]:
        return {"count": len(request.state.orders)}

    @app.get("/orders")
    async def orders(request: Request, who: Annotated[Principal, Depends(reader)]) -> dict[str, Any]:
        return {"owner": who.sub, "orders": request.state.orders}

    @app.post("/orders")
    async def place(who: Annotated[Principal, Depends(writer)]) -> dict[str, str]:
        return {"placed_by": who.sub}

    tokenlife.install(app)
    app.add_api_route("/ops/ready", tokenlife.readiness, include_in_schema=False)
    app.add_api_route("/ops/metrics", tokenlife.metrics, include_in_schema=False)
    return app


async def test_an_installed_app_keeps_its_lifespan_and_routes_and_refuses_a_logged_out_token(
    database_url: str,
) -> None:
    await add_user(database_url, "ada@example.com", scopes="read")
    with running_auth_server(database_url) as auth_url:
        tokenlife = Protection(resource_settings(auth_url, "", "unused"))
        events: list[str] = []
        async with serving(orders_app(tokenlife, events)) as http:
            await eventually(lambda: _is(http, "/ops/ready", 200), "the app's readiness answers 200")
            assert events == [f"own start, auth at {auth_url}"]
            token = await login(auth_url, "ada@example.com", "read")
            bearer = {"Authorization": f"Bearer {token}"}
            assert (await http.get("/orders/count")).json() == {"count": 2}
            mine = await http.get("/orders", headers=bearer)
            assert mine.status_code == 200, mine.text
            assert mine.json()["orders"] == ["o-1", "o-2"]
            placed = await http.post("/orders", headers=bearer)
            assert placed.status_code == 403
            assert 'error="insufficient_scope"' in placed.headers["www-authenticate"]
            assert placed.json()["error"] == "insufficient_scope"  # the RFC 6750 body, not {"detail"}
            for path in ("/v1/whoami", "/readyz", "/metrics"):
                assert (await http.get(path, headers=bearer)).status_code == 404
            assert "tokenlife_applied_position" in (await http.get("/ops/metrics")).text

            await logout(auth_url, token)
            # The revocation reaches the app by long-poll, milliseconds after the logout's answer.
            await eventually(lambda: _is(http, "/orders", 401, bearer), "the logged-out token is refused")
            refused = await http.get("/orders", headers=bearer)
            assert refused.json()["error"] == "invalid_token"
        assert events[-1] == "own stop"
        with pytest.raises(NotRunning):
            _ = tokenlife.runtime


async def test_a_plain_starlette_app_is_protected_by_the_middleware(database_url: str) -> None:
    await add_user(database_url, "bob@example.com", scopes="read")
    with running_auth_server(database_url) as auth_url:
        tokenlife = Protection(resource_settings(auth_url, "", "unused"))

        async def whoami(request: Request) -> JSONResponse:
            return JSONResponse({"sub": request.state.principal.sub})

        app = Starlette(
            routes=[Route("/me", whoami), Route("/ready", tokenlife.readiness)],
            lifespan=tokenlife.lifespan(),
            middleware=[Middleware(tokenlife.middleware, exclude_paths=["/ready"])],
        )
        async with serving(app) as http:
            await eventually(lambda: _is(http, "/ready", 200), "readiness, left open by the middleware")
            token = await login(auth_url, "bob@example.com")
            bearer = {"Authorization": f"Bearer {token}"}
            assert (await http.get("/me", headers=bearer)).status_code == 200
            missing = await http.get("/me")
            assert missing.status_code == 401
            assert missing.headers["www-authenticate"] == 'Bearer realm="tokenlife"'
            await logout(auth_url, token)
            await eventually(lambda: _is(http, "/me", 401, bearer), "the logged-out token is refused")
            refused = await http.get("/me", headers=bearer)
            assert refused.json()["error"] == "invalid_token"
