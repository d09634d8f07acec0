"""The feed against a real auth service process, a real RabbitMQ and a real PostgreSQL.

The relay is not running in these tests: what reaches the exchange is what a test publishes there, so each
test controls exactly which path (broker or HTTP) an event takes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aio_pika
import httpx
import pytest
from fastapi import FastAPI

from amqpkit.streams import declare_stream
from auth_service import contract as c
from resource_service.app import Runtime, create_app
from resource_service.settings import ResourceSettings
from tests.conftest import PASSWORD, SERVICE_CLIENT, add_user, start_auth_server

pytestmark = pytest.mark.integration

DEADLINE = 10.0
# Heartbeats from nobody for 2 x 60 s: the HTTP poller stays idle, so only the broker path moves the state.
QUIET = {"heartbeat_interval": 60.0}


def resource_settings(auth_url: str, amqp_url: str, exchange: str, **overrides: Any) -> ResourceSettings:
    """Dev-mode settings with short intervals, so the suite stays fast."""
    values: dict[str, Any] = {
        "env": "dev",
        "auth_url": auth_url,
        "amqp_url": amqp_url,
        "exchange": exchange,
        "service_client_id": SERVICE_CLIENT[0],
        "service_client_secret": SERVICE_CLIENT[1],
        "poll_interval": 0.2,
        "heartbeat_interval": 0.2,
        "max_staleness": 1.5,
        "reconnect_max_backoff": 0.5,
        "http_timeout": 2.0,
        "jwks_min_interval": 0.0,
    }
    return ResourceSettings(**(values | overrides))


async def eventually(check: Callable[[], Awaitable[bool]], what: str, deadline: float = DEADLINE) -> None:
    """Poll `check` until it holds; fail naming `what` after the deadline."""
    end = time.monotonic() + deadline
    while not await check():
        if time.monotonic() > end:
            pytest.fail(f"not within {deadline} s: {what}")
        await asyncio.sleep(0.05)


@asynccontextmanager
async def resource_app(settings: ResourceSettings) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    """The sample resource service in-process, lifespan started; an HTTP client and its runtime."""
    app: FastAPI = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://resource.test") as client:
            yield client, app.state.runtime


async def login(auth_url: str, email: str, scope: str | None = None) -> str:
    """An access token for the user, from the real token endpoint."""
    form = {"grant_type": "password", "username": email, "password": PASSWORD}
    if scope:
        form["scope"] = scope
    async with httpx.AsyncClient(base_url=auth_url) as http:
        response = await http.post("/oauth/token", data=form)
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


async def logout(auth_url: str, token: str) -> int:
    """Log the token's session out; the log position of the revocation."""
    async with httpx.AsyncClient(base_url=auth_url) as http:
        response = await http.post("/v1/auth/logout", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    position: int = response.json()["position"]
    return position


async def log_events(auth_url: str) -> c.EventPage:
    """The whole log, from the events API."""
    async with httpx.AsyncClient(base_url=auth_url, auth=SERVICE_CLIENT) as http:
        response = await http.get("/v1/events", params={"after": 0})
    return c.EventPage.model_validate_json(response.content)


async def snapshot(auth_url: str) -> c.RevocationSnapshot:
    """The auth service's snapshot of live revocations."""
    async with httpx.AsyncClient(base_url=auth_url, auth=SERVICE_CLIENT) as http:
        response = await http.get("/v1/revocations")
    return c.RevocationSnapshot.model_validate_json(response.content)


async def live_revocations(auth_url: str) -> list[c.Revocation]:
    """The auth service's live revocations, in the order RevocationState.revocations() gives."""
    return sorted((await snapshot(auth_url)).revocations, key=lambda r: (r.kind.value, r.subject))


async def whoami(client: httpx.AsyncClient, token: str) -> httpx.Response:
    """GET /v1/whoami with the token."""
    return await client.get("/v1/whoami", headers={"Authorization": f"Bearer {token}"})


class Exchange:
    """The test's side of the exchange: publishes as the relay would, and cleans up what the feed declared."""

    def __init__(self, connection: aio_pika.abc.AbstractConnection, name: str) -> None:
        self.connection = connection
        self.name = name

    async def publish(self, body: bytes, routing_key: str, headers: dict[str, Any] | None = None) -> None:
        """Publish one message, as the relay publishes them."""
        channel = await self.connection.channel()
        try:
            exchange = await channel.declare_exchange(self.name, aio_pika.ExchangeType.TOPIC, durable=True)
            await exchange.publish(aio_pika.Message(body, headers=headers or {}), routing_key=routing_key)
        finally:
            await channel.close()

    async def publish_event(self, raw: dict[str, Any]) -> None:
        """Publish a logged event in its wire form."""
        event = c.decode(raw)
        assert event.position is not None
        headers = {"position": event.position, "prev_position": event.position - 1}
        await self.publish(c.encode(event), event.type, headers)


@pytest.fixture
async def exchange(amqp_url: str, exchange_name: str) -> AsyncIterator[Exchange]:
    """A publisher on the test's exchange; deletes the exchange and the feed's dead-letter pair after."""
    connection = await aio_pika.connect(amqp_url)
    try:
        yield Exchange(connection, exchange_name)
        channel = await connection.channel()
        await channel.queue_delete(f"{exchange_name}.dead")
        await channel.exchange_delete(f"{exchange_name}.dlx")
        await channel.exchange_delete(exchange_name)
    finally:
        await connection.close()


async def test_logout_is_rejected_over_http_polling_without_a_relay(
    auth_server: str, database_url: str, amqp_url: str, exchange: Exchange
) -> None:
    await add_user(database_url, "ann@example.com")
    token = await login(auth_server, "ann@example.com")
    async with resource_app(resource_settings(auth_server, amqp_url, exchange.name)) as (client, rt):
        await eventually(lambda: _ready(client), "ready")
        assert (await whoami(client, token)).status_code == 200
        await logout(auth_server, token)
        await eventually(lambda: _status(client, token, 401), "the logged-out token is refused")
        assert rt.guard.rejections["session_revoked"] >= 1


async def test_an_instance_started_after_revocations_is_not_ready_until_rebuilt(
    auth_server: str, database_url: str, amqp_url: str, exchange: Exchange
) -> None:
    await add_user(database_url, "bob@example.com")
    revoked = [await login(auth_server, "bob@example.com") for _ in range(3)]
    for token in revoked:
        await logout(auth_server, token)
    alive = await login(auth_server, "bob@example.com")
    head = (await log_events(auth_server)).head
    async with resource_app(resource_settings(auth_server, amqp_url, exchange.name, **QUIET)) as (client, rt):
        # The lifespan only started the tasks: nothing has been read from the log yet.
        response = await client.get("/readyz")
        assert response.status_code == 503
        assert response.headers["retry-after"]
        await eventually(lambda: _ready(client), "ready")
        assert rt.feed.state.applied_position == head
        for token in revoked:
            response = await whoami(client, token)
            assert response.status_code == 401
            assert 'error="invalid_token"' in response.headers["www-authenticate"]
        assert (await whoami(client, alive)).status_code == 200


@pytest.fixture(params=["queues", "stream"])
async def transport(request: pytest.FixtureRequest, amqp_url: str, exchange: Exchange) -> str:
    """The broker transport under test; for the stream, the stream declared as the relay would, first."""
    if request.param == "stream":
        request.getfixturevalue("stream")  # the plugin must answer; the stream is deleted after the test
        channel = await exchange.connection.channel()
        await declare_stream(channel, exchange.name, max_age=3600, max_bytes=100_000_000)
        await channel.close()
    return str(request.param)


async def test_duplicated_messages_change_nothing_and_need_no_gap_fill(
    auth_server: str, database_url: str, amqp_url: str, exchange: Exchange, transport: str
) -> None:
    await add_user(database_url, "cid@example.com")
    settings = resource_settings(auth_server, amqp_url, exchange.name, transport=transport, **QUIET)
    async with resource_app(settings) as (client, rt):
        await eventually(lambda: _ready(client), "ready")
        start = rt.feed.state.applied_position
        tokens = [await login(auth_server, "cid@example.com") for _ in range(2)]
        for token in tokens:
            await logout(auth_server, token)
        page = await log_events(auth_server)
        new = [raw for raw in page.events if raw["position"] > start]
        for raw in new + new:  # every event twice, the second round entirely duplicates
            await exchange.publish_event(raw)
        await eventually(lambda: _applied(rt, page.head), "every published event applied")
        assert rt.feed.counters["gap_fills"] == 0
        assert rt.feed.state.revocations() == await live_revocations(auth_server)
        for token in tokens:
            assert (await whoami(client, token)).status_code == 401


async def test_reordered_messages_are_gap_filled_from_the_log(
    auth_server: str, database_url: str, amqp_url: str, exchange: Exchange, transport: str
) -> None:
    await add_user(database_url, "dee@example.com")
    settings = resource_settings(auth_server, amqp_url, exchange.name, transport=transport, **QUIET)
    async with resource_app(settings) as (client, rt):
        await eventually(lambda: _ready(client), "ready")
        start = rt.feed.state.applied_position
        tokens = [await login(auth_server, "dee@example.com") for _ in range(2)]
        for token in tokens:
            await logout(auth_server, token)
        page = await log_events(auth_server)
        new = [raw for raw in page.events if raw["position"] > start]
        for raw in reversed(new):  # the newest first: its prev_position shows the gap
            await exchange.publish_event(raw)
        await eventually(lambda: _applied(rt, page.head), "the log applied up to its head")
        assert rt.feed.counters["gap_fills"] >= 1
        assert rt.feed.state.revocations() == await live_revocations(auth_server)
        for token in tokens:
            assert (await whoami(client, token)).status_code == 401


async def test_a_malformed_message_is_dead_lettered_and_its_event_read_from_the_log(
    auth_server: str, database_url: str, amqp_url: str, exchange: Exchange, transport: str
) -> None:
    """On the stream nothing can be dead-lettered (it keeps every message): counted and re-read alike."""
    await add_user(database_url, "eve@example.com")
    settings = resource_settings(auth_server, amqp_url, exchange.name, transport=transport, **QUIET)
    async with resource_app(settings) as (client, rt):
        await eventually(lambda: _ready(client), "ready")
        token = await login(auth_server, "eve@example.com")
        position = await logout(auth_server, token)
        # What the relay would have sent for the logout, mangled on the way.
        garbage = b'{"schema_version": 1, "type": "session.revoked", "position": "not a number"'
        await exchange.publish(
            garbage, "session.revoked", {"position": position, "prev_position": position - 1}
        )
        await eventually(lambda: _status(client, token, 401), "the revocation read from the log")
        assert rt.feed.counters["malformed"] == 1
        assert not rt.feed.crashes
        assert rt.feed.live
        if transport == "stream":
            return
        channel = await exchange.connection.channel()
        dead = await channel.get_queue(f"{exchange.name}.dead")
        letters: list[bytes] = []

        async def dead_lettered() -> bool:
            letter = await dead.get(timeout=5, fail=False)
            if letter is not None:
                await letter.ack()
                letters.append(letter.body)
            return bool(letters)

        await eventually(dead_lettered, "the malformed message in the dead-letter queue")
        assert letters == [garbage]


async def _ready(client: httpx.AsyncClient) -> bool:
    return (await client.get("/readyz")).status_code == 200


async def _status(client: httpx.AsyncClient, token: str, status: int) -> bool:
    return (await whoami(client, token)).status_code == status


async def _applied(rt: Runtime, position: int) -> bool:
    return rt.feed.state.applied_position >= position


async def test_with_the_relay_a_logout_arrives_over_the_broker(
    database_url: str, amqp_url: str, exchange: Exchange
) -> None:
    proc, auth_url = start_auth_server(
        database_url, amqp_url, TOKENLIFE_EXCHANGE=exchange.name, TOKENLIFE_HEARTBEAT_INTERVAL="0.2"
    )
    try:
        await add_user(database_url, "ida@example.com")
        token = await login(auth_url, "ida@example.com")
        async with resource_app(resource_settings(auth_url, amqp_url, exchange.name)) as (client, rt):
            feed = rt.feed
            await eventually(lambda: _heartbeats(rt, 3), "relay heartbeats reach the feed")
            polls = feed.counters["polls"]
            await logout(auth_url, token)
            await eventually(lambda: _status(client, token, 401), "the logged-out token is refused")
            # Heartbeats kept coming, so the HTTP poller stayed idle: the broker carried the revocation.
            assert feed.counters["polls"] == polls
            assert feed.freshness() == "fresh"
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()


async def _heartbeats(rt: Runtime, at_least: int) -> bool:
    return rt.feed.live and rt.feed.counters["heartbeats"] >= at_least
