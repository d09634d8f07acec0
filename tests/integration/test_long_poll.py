"""Long-poll of the events API (`GET /v1/events?wait=S`) on a real PostgreSQL, woken by LISTEN/NOTIFY."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator, MutableMapping
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from auth_service import contract as c
from auth_service.api.deps import app_state
from auth_service.app import create_app
from auth_service.log.listener import LogListener
from auth_service.log.store import append
from auth_service.settings import AuthSettings
from tests.conftest import SERVICE_CLIENT

pytestmark = pytest.mark.integration


def _revoked() -> c.TokenRevoked:
    return c.TokenRevoked(
        jti=uuid.uuid4().hex, expires_at=datetime.now(UTC) + timedelta(minutes=5), reason="t"
    )


async def _commit(engine: AsyncEngine) -> int:
    async with engine.begin() as conn:
        (event,) = await append(conn, [_revoked()], lock_timeout_ms=5000)
    assert event.position is not None
    return event.position


@pytest.fixture
async def app(auth_settings: AuthSettings) -> AsyncIterator[FastAPI]:
    """The auth service in-process with its lifespan (and so its LogListener) running."""
    application = create_app(auth_settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A service client's HTTP client of the in-process app."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://auth.test", auth=SERVICE_CLIENT
    ) as client:
        yield client


def _listener(app: FastAPI) -> LogListener:
    found = app_state(app).log_listener
    assert found is not None
    return found


async def _connected(app: FastAPI) -> None:
    end = time.monotonic() + 10
    while not _listener(app).connected:
        assert time.monotonic() < end, "the LISTEN connection did not open"
        await asyncio.sleep(0.02)


async def _holding(app: FastAPI, waiters: int) -> None:
    end = time.monotonic() + 10
    while _listener(app).waiters < waiters:
        assert time.monotonic() < end, f"{waiters} long-polls were not held"
        await asyncio.sleep(0.01)


async def _page(http: httpx.AsyncClient, **params: Any) -> c.EventPage:
    response = await http.get("/v1/events", params=params)
    assert response.status_code == 200, response.text
    return c.EventPage.model_validate_json(response.content)


async def test_answers_at_once_when_events_after_the_position_exist(
    http: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    position = await _commit(engine)
    page = await _page(http, after=position - 1, wait=30)
    assert [e["position"] for e in page.events] == [position]
    assert page.head == position
    assert page.held is not None
    assert page.held < 1.0
    assert page.server_time is not None


async def test_holds_until_a_commit_and_answers_with_it(
    app: FastAPI, http: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await _connected(app)
    head = await _commit(engine)
    held = asyncio.create_task(_page(http, after=head, wait=30))
    await _holding(app, 1)
    assert not held.done()
    position = await _commit(engine)
    page = await asyncio.wait_for(held, 10)  # far below the 30 s asked for: the commit woke it
    assert [e["position"] for e in page.events] == [position]
    assert page.held is not None
    assert 0 < page.held < 30
    assert _listener(app).waiters == 0


async def test_an_idle_hold_ends_after_wait_with_an_empty_page_and_the_head(
    app: FastAPI, http: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    head = await _commit(engine)
    before = datetime.now(UTC)
    page = await _page(http, after=head, wait=0.3)
    assert page.events == []
    assert page.head == head
    assert page.held is not None
    assert page.held >= 0.3 - 0.05
    assert page.server_time is not None
    assert page.server_time >= before


async def test_one_commit_wakes_every_waiter_through_the_one_listener(
    app: FastAPI, http: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await _connected(app)
    before = _listener(app).notifications
    head = await _commit(engine)
    end = time.monotonic() + 10
    while _listener(app).notifications < before + 1:  # that commit's NOTIFY arrives asynchronously
        assert time.monotonic() < end, "no NOTIFY for a commit"
        await asyncio.sleep(0.01)
    notified = _listener(app).notifications
    waiters = [asyncio.create_task(_page(http, after=head, wait=30)) for _ in range(5)]
    await _holding(app, 5)
    position = await _commit(engine)
    pages = await asyncio.wait_for(asyncio.gather(*waiters), 10)
    assert all([e["position"] for e in p.events] == [position] for p in pages)
    assert _listener(app).notifications == notified + 1


async def test_past_the_waiter_limit_the_answer_is_503_with_retry_after(
    auth_settings: AuthSettings, engine: AsyncEngine
) -> None:
    settings = auth_settings.model_copy(update={"long_poll_max_waiters": 1})
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://a.test", auth=SERVICE_CLIENT
        ) as http:
            first = asyncio.create_task(http.get("/v1/events", params={"after": 0, "wait": 30}))
            await _holding(application, 1)
            refused = await http.get("/v1/events", params={"after": 0, "wait": 30})
            assert refused.status_code == 503
            assert int(refused.headers["retry-after"]) >= 1
            assert refused.json()["error"] == "temporarily_unavailable"
            assert "long-poll" in refused.json()["error_description"]
            # Without wait the same request is served: the limit is on holds, not on reads.
            assert (await http.get("/v1/events", params={"after": 0})).status_code == 200
            await _commit(engine)
            assert (await asyncio.wait_for(first, 10)).status_code == 200


async def test_a_client_that_goes_away_ends_its_hold_and_frees_its_slot(app: FastAPI) -> None:
    basic = base64.b64encode(f"{SERVICE_CLIENT[0]}:{SERVICE_CLIENT[1]}".encode())
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/v1/events",
        "raw_path": b"/v1/events",
        "root_path": "",
        "query_string": b"after=0&wait=30",
        "headers": [(b"host", b"auth.test"), (b"authorization", b"Basic " + basic)],
        "client": ("127.0.0.1", 50000),
        "server": ("auth.test", 80),
    }
    gone = asyncio.Event()
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        pass

    call = asyncio.create_task(app(scope, receive, send))
    while _listener(app).waiters < 1:
        assert not call.done(), "the request was answered instead of held"
        await asyncio.sleep(0.01)
    gone.set()
    await asyncio.wait_for(call, 10)  # far below the 30 s hold: the disconnect ended it
    assert _listener(app).waiters == 0


@pytest.mark.parametrize("query", ["wait=31", "wait=-1", "wait=soon", "wait=1&wait=2"])
async def test_a_bad_wait_is_a_400_with_a_reason(http: httpx.AsyncClient, query: str) -> None:
    response = await http.get(f"/v1/events?after=0&{query}")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert "wait" in response.json()["error_description"]
