"""The relay inside the auth service: a logout reaches the exchange without waiting for a poll."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aio_pika
import pytest

from auth_service import contract as c
from auth_service.settings import AuthSettings
from tests.conftest import PASSWORD, add_user, serve_auth

pytestmark = pytest.mark.integration


async def next_message(queue: aio_pika.abc.AbstractQueue, wanted: str) -> tuple[bytes, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        message = await queue.get(timeout=10, fail=False)
        if message is None:
            await asyncio.sleep(0.02)
            continue
        await message.ack()
        if message.routing_key == wanted:
            return message.body, message.headers
    raise AssertionError(f"no {wanted} message within 10 s")


async def test_logout_is_published_by_the_relay_running_in_the_auth_service(
    auth_settings: AuthSettings, database_url: str, amqp_url: str, exchange_name: str
) -> None:
    settings = auth_settings.model_copy(
        update={
            "relay_enabled": True,
            "amqp_url": auth_settings.amqp_url.__class__(amqp_url),
            "exchange": exchange_name,
            # A poll this slow shows that the normal path is the NOTIFY, not the timer.
            "relay_poll_interval": 600.0,
            "heartbeat_interval": 0.2,
        }
    )
    await add_user(database_url, "ada@example.com")
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(exchange_name, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(exchange, routing_key="#")
        async with serve_auth(settings) as client:
            tokens = (
                await client.post(
                    "/oauth/token",
                    data={"grant_type": "password", "username": "ada@example.com", "password": PASSWORD},
                )
            ).json()
            response = await client.post(
                "/v1/auth/logout", headers={"Authorization": f"Bearer {tokens['access_token']}"}
            )
            assert response.status_code == 200
            body, headers = await next_message(queue, "session.revoked")
            event = c.decode(body)
            assert isinstance(event, c.SessionRevoked)
            assert (event.position, headers["position"], headers["prev_position"]) == (3, 3, 2)
            beat, _ = await next_message(queue, c.HEARTBEAT_TYPE)
            assert c.decode_heartbeat(beat).head_position >= 3
            metrics = (await client.get("/metrics")).text
            assert "tokenlife_relay_leader 1.0" in metrics
            assert (await client.get("/readyz")).json() == {"status": "ready"}
    finally:
        await connection.close()
