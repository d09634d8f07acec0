"""Protection's installation: what one call adds to an app (and nothing more), and what it refuses to run.

Nothing here starts the lifespan (no I/O): tests/integration/test_protection.py runs it against a real auth
service.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from starlette.middleware.cors import CORSMiddleware

from resource_service.protection import GateMissing, NotRunning, Principal, Protection, ResourceSettings
from resource_service.web.answer_gate import AnswerGate
from resource_service.web.dependency import BearerRefusal

SETTINGS = ResourceSettings(
    env="prod", auth_url="http://auth.invalid", service_client_id="svc", service_client_secret="s" * 20
)


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/public")
    async def public() -> dict[str, str]:
        return {"ok": "yes"}

    return app


def _middleware(app: FastAPI) -> list[object]:
    return [m.cls for m in app.user_middleware]


def _paths(app: FastAPI) -> list[str]:
    return sorted(getattr(route, "path", "") for route in app.router.routes)


def test_install_adds_the_gate_and_the_error_handler_and_no_route() -> None:
    app = _app()
    before = _paths(app)
    Protection(SETTINGS).install(app)
    assert _paths(app) == before  # no /v1/whoami, no /readyz, no /metrics: the app mounts what it wants
    assert _middleware(app) == [AnswerGate]
    assert BearerRefusal in app.exception_handlers


def test_install_adds_cors_only_when_origins_are_given() -> None:
    app = _app()
    Protection(SETTINGS).install(app, cors_origins=["https://console.example"])
    # CORS outside the gate, so a success turned into a 503 at answer time still carries its headers.
    assert _middleware(app) == [CORSMiddleware, AnswerGate]


def test_install_wraps_the_apps_own_lifespan_once() -> None:
    @asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[None]:
        yield

    tokenlife = Protection(SETTINGS)
    app = FastAPI(lifespan=tokenlife.lifespan(own))
    composed = app.router.lifespan_context
    tokenlife.install(app)
    assert app.router.lifespan_context is composed  # already tokenlife's: not started twice

    plain = FastAPI(lifespan=own)
    tokenlife.install(plain)
    assert plain.router.lifespan_context is not own


# At module level: the route's string annotation (PEP 563) is resolved against this module's globals.
UNGATED = Protection(SETTINGS)
Reader = Annotated[Principal, Depends(UNGATED.require(["read"]))]


async def test_a_required_principal_without_the_answer_gate_is_refused_loudly() -> None:
    app = FastAPI()

    @app.get("/orders")
    async def orders(who: Reader) -> dict[str, str]:
        return {"owner": who.sub}

    # Not installed: the dependency would accept a request whose answer nobody judges when it is written.
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        with pytest.raises(GateMissing, match="install"):
            await http.get("/orders", headers={"Authorization": "Bearer x"})


async def test_readiness_outside_the_lifespan_is_a_503_and_the_runtime_is_not_there() -> None:
    tokenlife = Protection(SETTINGS)
    app = FastAPI()
    tokenlife.install(app)
    app.add_api_route("/ops/ready", tokenlife.readiness)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        response = await http.get("/ops/ready")
    assert response.status_code == 503
    assert response.json() == {"ready": False, "running": False}
    assert response.headers["retry-after"] == "1"
    with pytest.raises(NotRunning):
        _ = tokenlife.runtime


def test_settings_come_from_keywords_or_an_object_not_both(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOKENLIFE_ENV", raising=False)
    keywords: dict[str, Any] = {
        "auth_url": "http://auth.example/",
        "service_client_id": "orders",
        "service_client_secret": "s" * 20,
    }
    tokenlife = Protection(**keywords)
    assert tokenlife.settings.auth_url == "http://auth.example"
    assert tokenlife.settings.issuer == "http://auth.example"
    with pytest.raises(TypeError, match="not both"):
        Protection(SETTINGS, **keywords)
