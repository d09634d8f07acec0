"""A real stack for the open-connection tests: `tokenlife auth serve` with its relay on RabbitMQ, and the
sample resource service served by uvicorn on a loopback port in the test's own event loop (so a test can read
its runtime), with clients that speak WebSocket (`websockets`) and server-sent events (httpx) to it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aio_pika
import httpx
import uvicorn
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from resource_service.app import Runtime, create_app
from resource_service.settings import ResourceSettings
from resource_service.web.websocket import AUTH_MESSAGE_PROTOCOL, BEARER_PROTOCOL_PREFIX, PROTOCOL
from tests.conftest import PASSWORD, free_port
from tests.integration.test_feed import resource_settings

DEADLINE = 10.0


@dataclass
class Resource:
    """The resource service under test: its base URLs and its runtime."""

    http: str
    ws: str
    runtime: Runtime


@asynccontextmanager
async def serve_resource(settings: ResourceSettings) -> AsyncIterator[Resource]:
    """The sample resource service under uvicorn on a free loopback port, ready (caught up and fresh)."""
    port = free_port()
    app = create_app(settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base) as http:
            end = time.monotonic() + DEADLINE
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/readyz")).status_code == 200:
                        break
                assert time.monotonic() < end, "the resource service did not become ready"
                assert not task.done(), "uvicorn stopped"
                await asyncio.sleep(0.05)
        yield Resource(base, f"ws://127.0.0.1:{port}", app.state.runtime)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, DEADLINE)


@asynccontextmanager
async def resource_for(
    auth_url: str, amqp_url: str, exchange: str, **overrides: Any
) -> AsyncIterator[Resource]:
    """`serve_resource` with the tests' short intervals (test_feed.resource_settings)."""
    async with serve_resource(resource_settings(auth_url, amqp_url, exchange, **overrides)) as resource:
        yield resource


async def delete_exchange(amqp_url: str, name: str) -> None:
    """Remove what the relay and the feed declared for one test's exchange."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        await channel.queue_delete(f"{name}.dead")
        await channel.exchange_delete(f"{name}.dlx")
        await channel.exchange_delete(name)
    finally:
        await connection.close()


async def tokens(auth_url: str, email: str) -> dict[str, Any]:
    """A fresh login (a new session): the token endpoint's answer."""
    form = {"grant_type": "password", "username": email, "password": PASSWORD}
    async with httpx.AsyncClient(base_url=auth_url) as http:
        response = await http.post("/oauth/token", data=form)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def logout(auth_url: str, token: str, scope: str = "session") -> None:
    """POST /v1/auth/logout with the token and scope; 2xx expected."""
    async with httpx.AsyncClient(base_url=auth_url) as http:
        response = await http.post(
            "/v1/auth/logout", data={"scope": scope}, headers={"Authorization": f"Bearer {token}"}
        )
    assert response.status_code == 200, response.text


def ticks_url(resource: Resource, interval: float = 0.05) -> str:
    """The sample's WebSocket feed, ticking every `interval` seconds."""
    return f"{resource.ws}/v1/ticks?interval={interval}"


@asynccontextmanager
async def open_socket(resource: Resource, token: str, via: str = "header") -> AsyncIterator[ClientConnection]:
    """A WebSocket to the ticking feed with the token in the Authorization header, the subprotocol, or the
    first message; the first tick has been received."""
    headers: dict[str, str] = {}
    protocols: list[str] = []
    if via == "header":
        headers["Authorization"] = f"Bearer {token}"
    elif via == "protocol":
        protocols = [PROTOCOL, BEARER_PROTOCOL_PREFIX + token]
    else:
        protocols = [AUTH_MESSAGE_PROTOCOL]
    async with connect(
        ticks_url(resource),
        additional_headers=headers,
        subprotocols=protocols or None,  # type: ignore[arg-type]
        open_timeout=DEADLINE,
    ) as ws:
        if via == "message":
            await ws.send(json.dumps({"access_token": token}))
        first = json.loads(await asyncio.wait_for(ws.recv(), DEADLINE))
        assert first["tick"] == 1
        yield ws


async def closed(ws: ClientConnection) -> tuple[int | None, str | None]:
    """Read the socket until the server closes it; its close code and reason."""
    async with asyncio.timeout(DEADLINE):
        with contextlib.suppress(ConnectionClosed):  # raised for any close code but 1000 and 1001
            async for _ in ws:
                pass
    return ws.close_code, ws.close_reason


async def still_ticking(ws: ClientConnection) -> bool:
    """The socket still delivers ticks: one sent after this call was made arrives."""
    asked = time.time()
    async with asyncio.timeout(DEADLINE):
        while True:
            tick = json.loads(await ws.recv())
            if tick["at"] > asked:
                return True
