"""Open WebSockets and event streams end when their token does: a real `websockets` client and httpx against
the sample resource service under uvicorn, a real auth service process whose relay publishes to RabbitMQ."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from auth_service.db.engine import asyncpg_dsn, create_engine
from auth_service.log.writer import LogWriter
from auth_service.settings import DEV_KEY_ENCRYPTION_KEY
from auth_service.tokens import keys
from resource_service.web.websocket import AUTH_MESSAGE_PROTOCOL, PROTOCOL
from tests.conftest import add_user, running_auth_server
from tests.integration.live_stack import (
    DEADLINE,
    Resource,
    closed,
    delete_exchange,
    logout,
    open_socket,
    resource_for,
    still_ticking,
    ticks_url,
    tokens,
)
from tests.integration.test_feed import eventually
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration

ALICE = "alice@example.com"
BOB = "bob@example.com"
REVOKED = (1008, "token revoked")


@pytest.fixture
async def auth_url(database_url: str, amqp_url: str, exchange_name: str) -> AsyncIterator[str]:
    """`tokenlife auth serve` with its relay publishing to this test's exchange; two users in it."""
    await add_user(database_url, ALICE)
    await add_user(database_url, BOB)
    try:
        with running_auth_server(database_url, amqp_url, TOKENLIFE_EXCHANGE=exchange_name) as base:
            yield base
    finally:
        await delete_exchange(amqp_url, exchange_name)


@pytest.fixture
async def resource(auth_url: str, amqp_url: str, exchange_name: str) -> AsyncIterator[Resource]:
    """The sample resource service on that exchange, ready."""
    async with resource_for(auth_url, amqp_url, exchange_name) as found:
        yield found


# --- revocations close exactly the sockets they cover ----------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "closing", "staying"),
    [
        ("session", {"this"}, {"other_session", "bob"}),
        ("others", {"other_session"}, {"this", "bob"}),
        ("all", {"this", "other_session"}, {"bob"}),
    ],
)
async def test_a_logout_closes_the_sockets_of_its_scope_with_token_revoked_and_no_other(
    auth_url: str, resource: Resource, scope: str, closing: set[str], staying: set[str]
) -> None:
    here = (await tokens(auth_url, ALICE))["access_token"]
    there = (await tokens(auth_url, ALICE))["access_token"]
    bob = (await tokens(auth_url, BOB))["access_token"]
    async with (
        open_socket(resource, here, "header") as this,
        open_socket(resource, there, "protocol") as other_session,
        open_socket(resource, bob, "message") as bobs,
    ):
        sockets = {"this": this, "other_session": other_session, "bob": bobs}
        await logout(auth_url, here, scope)
        for name in sorted(closing):
            assert await closed(sockets[name]) == REVOKED, name
        for name in sorted(staying):
            assert await still_ticking(sockets[name]), name
        assert len(resource.runtime.live) == len(staying)
        assert resource.runtime.live.ended["token revoked"] == len(closing)


async def test_an_rfc7009_revoke_closes_the_socket_of_that_token_only(
    auth_url: str, resource: Resource
) -> None:
    revoked = (await tokens(auth_url, ALICE))["access_token"]
    kept = (await tokens(auth_url, ALICE))["access_token"]
    async with open_socket(resource, revoked) as gone, open_socket(resource, kept) as alive:
        async with httpx.AsyncClient(base_url=auth_url) as http:
            assert (await http.post("/oauth/revoke", data={"token": revoked})).status_code == 200
        assert await closed(gone) == REVOKED
        assert await still_ticking(alive)


async def test_a_key_revocation_closes_every_socket_of_a_token_it_signed(
    auth_url: str, resource: Resource, database_url: str
) -> None:
    alice = await tokens(auth_url, ALICE)
    bob = await tokens(auth_url, BOB)
    async with httpx.AsyncClient(base_url=auth_url) as http:
        kid = (await http.get("/.well-known/jwks.json")).json()["keys"][0]["kid"]
    async with (
        open_socket(resource, alice["access_token"]) as first,
        open_socket(resource, bob["access_token"]) as second,
    ):
        engine = create_engine(database_url, pool_size=1)
        try:
            async with (
                LogWriter.running(
                    asyncpg_dsn(database_url), lock_timeout_ms=5000, access_token_ttl=300
                ) as writer,
                engine.connect() as conn,
            ):
                await keys.revoke(writer, conn, kid, DEV_KEY_ENCRYPTION_KEY, "compromised")
        finally:
            await engine.dispose()
        assert await closed(first) == REVOKED
        assert await closed(second) == REVOKED
    assert resource.runtime.live.ended["token revoked"] == 2


async def test_a_token_that_expires_while_connected_closes_with_token_expired(
    database_url: str, amqp_url: str, exchange_name: str
) -> None:
    await add_user(database_url, ALICE)
    try:
        with running_auth_server(
            database_url, amqp_url, TOKENLIFE_EXCHANGE=exchange_name, TOKENLIFE_ACCESS_TOKEN_TTL="10"
        ) as auth:
            async with resource_for(auth, amqp_url, exchange_name, leeway=0) as resource:
                token = (await tokens(auth, ALICE))["access_token"]
                async with open_socket(resource, token) as ws:
                    # The token lives 10 s: longer than `closed` waits.
                    await asyncio.sleep(5)
                    assert await closed(ws) == (1008, "token expired")
    finally:
        await delete_exchange(amqp_url, exchange_name)


async def test_an_instance_that_goes_stale_closes_its_sockets_with_the_staleness_reason(
    auth_url: str, amqp_url: str, exchange_name: str
) -> None:
    auth = urlsplit(auth_url)
    broker = urlsplit(amqp_url)
    async with (
        TcpProxy(auth.hostname or "", auth.port or 80) as auth_proxy,
        TcpProxy(broker.hostname or "", broker.port or 5672) as broker_proxy,
    ):
        via_auth = f"http://{auth_proxy.host}:{auth_proxy.port}"
        via_broker = amqp_url.replace(
            broker.netloc.rpartition("@")[2], f"{broker_proxy.host}:{broker_proxy.port}"
        )
        async with resource_for(via_auth, via_broker, exchange_name, issuer=auth_url) as resource:
            token = (await tokens(auth_url, ALICE))["access_token"]
            async with open_socket(resource, token) as ws:
                auth_proxy.blackhole()
                broker_proxy.blackhole()
                assert await closed(ws) == (1013, "revocation state stale")
            assert resource.runtime.live.ended["revocation state stale"] == 1
            auth_proxy.heal()
            broker_proxy.heal()


# --- refusals ----------------------------------------------------------------------------------------------


async def _refusal(resource: Resource, **kwargs: object) -> httpx.Response | None:
    """The HTTP answer refusing the upgrade, or None when the socket opened."""
    url = kwargs.pop("url", ticks_url(resource))
    try:
        async with connect(str(url), open_timeout=DEADLINE, **kwargs):  # type: ignore[arg-type]
            return None
    except InvalidStatus as exc:
        answer = exc.response
        headers = list(answer.headers.raw_items())
        return httpx.Response(answer.status_code, headers=headers, content=bytes(answer.body or b""))


async def _refused(resource: Resource, **kwargs: object) -> httpx.Response:
    refusal = await _refusal(resource, **kwargs)
    assert refusal is not None, "the upgrade was accepted"
    return refusal


async def test_a_missing_or_invalid_token_is_refused_before_the_upgrade_per_rfc_6750(
    resource: Resource,
) -> None:
    missing = await _refused(resource)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == 'Bearer realm="tokenlife"'
    invalid = await _refused(resource, additional_headers={"Authorization": "Bearer abc.def.ghi"})
    assert invalid.status_code == 401
    assert 'error="invalid_token"' in invalid.headers["www-authenticate"]
    assert invalid.json()["error"] == "invalid_token"
    protocol = await _refused(resource, subprotocols=[PROTOCOL, "tokenlife.bearer.abc.def.ghi"])
    assert protocol.status_code == 401


async def test_a_token_in_the_url_is_refused_before_the_upgrade(auth_url: str, resource: Resource) -> None:
    token = (await tokens(auth_url, ALICE))["access_token"]
    refused = await _refused(resource, url=f"{ticks_url(resource)}&access_token={token}")
    assert refused.status_code == 400
    assert 'error="invalid_request"' in refused.headers["www-authenticate"]
    assert "URL" in refused.json()["error_description"]


async def test_a_revoked_token_is_refused_before_the_upgrade(auth_url: str, resource: Resource) -> None:
    token = (await tokens(auth_url, ALICE))["access_token"]
    await logout(auth_url, token)
    header = {"Authorization": f"Bearer {token}"}

    async def refused_now() -> bool:
        return await _refusal(resource, additional_headers=header) is not None

    await eventually(refused_now, "the revoked token is refused")
    refused = await _refused(resource, additional_headers=header)
    assert refused.status_code == 401
    assert refused.json()["error_description"] == "token has been revoked"


@pytest.mark.parametrize(
    "first",
    ["not json", json.dumps(["a list"]), json.dumps({"token": "x"}), json.dumps({"access_token": 7})],
)
async def test_a_malformed_first_message_closes_with_a_clear_reason(resource: Resource, first: str) -> None:
    async with connect(ticks_url(resource), subprotocols=[AUTH_MESSAGE_PROTOCOL]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == AUTH_MESSAGE_PROTOCOL
        await ws.send(first)
        assert await closed(ws) == (1008, 'first message must be {"access_token": "<token>"}')


async def test_an_invalid_token_in_the_first_message_closes_with_the_rfc_6750_error(
    resource: Resource,
) -> None:
    async with connect(ticks_url(resource), subprotocols=[AUTH_MESSAGE_PROTOCOL]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"access_token": "abc.def.ghi"}))
        code, reason = await closed(ws)
    assert code == 1008
    assert reason is not None
    assert reason.startswith("invalid_token: ")


async def test_a_socket_the_client_closes_is_no_longer_watched(auth_url: str, resource: Resource) -> None:
    token = (await tokens(auth_url, ALICE))["access_token"]
    async with open_socket(resource, token, "protocol") as ws:
        assert ws.subprotocol == PROTOCOL
        assert len(resource.runtime.live) == 1

    async def unwatched() -> bool:
        return len(resource.runtime.live) == 0

    await eventually(unwatched, "the closed socket is no longer watched")


# --- event streams -----------------------------------------------------------------------------------------


async def test_an_event_stream_ends_with_an_end_event_when_its_session_is_logged_out(
    auth_url: str, resource: Resource
) -> None:
    token = (await tokens(auth_url, ALICE))["access_token"]
    other = (await tokens(auth_url, ALICE))["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    lines: list[str] = []
    async with httpx.AsyncClient(base_url=resource.http, timeout=DEADLINE) as http:
        async with open_socket(resource, other) as alive:
            async with http.stream("GET", "/v1/ticks/events?interval=0.05", headers=headers) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                async with asyncio.timeout(DEADLINE):
                    async for line in response.aiter_lines():
                        lines.append(line)
                        if line == "event: tick" and lines.count("event: tick") == 2:
                            await logout(auth_url, token)
            assert await still_ticking(alive)
    assert lines[-3:] == ["event: end", 'data: {"reason":"token_revoked","detail":"session_revoked"}', ""]
