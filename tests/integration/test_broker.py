"""The broker fixture: a real RabbitMQ, a per-test exchange, contract messages through it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import aio_pika
import pytest

from auth_service import contract as c

pytestmark = pytest.mark.integration


async def test_a_contract_event_crosses_a_per_test_topic_exchange(amqp_url: str, exchange_name: str) -> None:
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            exchange_name, aio_pika.ExchangeType.TOPIC, auto_delete=True
        )
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(exchange, routing_key="token.*")
        event = c.TokenRevoked(
            jti="j", expires_at=datetime.now(UTC), reason="test", position=1, prev_position=0
        )
        await exchange.publish(
            aio_pika.Message(c.encode(event), message_id=str(event.event_id)), routing_key=event.type.value
        )
        message = await asyncio.wait_for(anext(aiter(queue.iterator())), timeout=10)
        await message.ack()
        assert c.decode(message.body) == event
        assert message.message_id == str(event.event_id)
    finally:
        await connection.close()
