"""The relay's broker link and window against a real broker: runs of events in one write, each confirmed.

`BrokerLink.send` queues many publishes as one write, numbering their delivery tags itself; these tests hold
that each still arrives whole, in order, with its own confirm, and that every way a publish fails (nack,
return, no answer in time) still fails the window with its reason.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest

from auth_service.relay.publisher import BrokerLink, PublishFailure
from auth_service.relay.window import Window
from tests.integration.test_relay import Consumer, consumer, eventually
from tests.integration.test_relay_faults import broker_proxy, through
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration
__all__ = ["broker_proxy", "consumer"]  # fixtures shared with test_relay.py and test_relay_faults.py


def rows(first: int, count: int, **extra: Any) -> list[tuple[int, dict[str, Any], None]]:
    """Log rows as the relay reads them: position, the contract's payload, no commit time."""
    return [
        (
            p,
            {"type": "token.revoked", "event_id": str(uuid.uuid4()), "position": p, "prev_position": p - 1}
            | extra,
            None,
        )
        for p in range(first, first + count)
    ]


@pytest.fixture
async def link(amqp_url: str, exchange_name: str) -> AsyncIterator[BrokerLink]:
    opened = await BrokerLink.open(amqp_url, exchange_name, publish_timeout=5.0)
    try:
        yield opened
    finally:
        await opened.close()


async def settle(window: Window, count: int) -> list[int]:
    """Positions the window reports confirmed until `count` have been; a failure raises."""
    positions: list[int] = []
    while len(positions) < count:
        positions += [position for position, _ in window.confirmed()]
        await asyncio.sleep(0.005)
    return positions


async def test_one_write_of_many_events_gives_each_its_confirm_and_its_message(
    link: BrokerLink, consumer: Consumer
) -> None:
    window = Window(link, sent=0, size=500, wake=lambda: None)
    sent = rows(1, 200)
    await window.send_read(sent)
    assert window.sent == 200
    assert len(window.inflight) == 200

    assert await asyncio.wait_for(settle(window, 200), 10) == list(range(1, 201))
    await eventually(lambda: consumer.has_all(200), "200 events")
    assert consumer.positions == list(range(1, 201))
    for message, (position, payload, _) in zip(consumer.messages, sent, strict=True):
        assert json.loads(message.body) == payload
        assert message.message_id == payload["event_id"]
        assert message.type == "token.revoked"
        assert message.routing_key == "token.revoked"
        assert message.headers == {"position": position, "prev_position": position - 1}
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT


async def test_a_body_larger_than_a_frame_arrives_whole(link: BrokerLink, consumer: Consumer) -> None:
    window = Window(link, sent=0, size=10, wake=lambda: None)
    big = rows(1, 1, padding="x" * 300_000)  # RabbitMQ's frame_max is 128 KiB
    small = rows(2, 1)
    await window.send_read(big + small)

    assert await asyncio.wait_for(settle(window, 2), 10) == [1, 2]
    await eventually(lambda: consumer.has_all(2), "both events")
    assert [json.loads(m.body) for m in consumer.messages] == [big[0][1], small[0][1]]


async def test_a_full_write_queue_refuses_a_send_whole_until_the_writer_drains_it(
    link: BrokerLink, consumer: Consumer
) -> None:
    sent = rows(1, 100)
    # Sends never await, so the connection's writer cannot take anything meanwhile: its queue fills.
    accepted = 0
    while accepted < len(sent) and link.send([sent[accepted][:2]]) is not None:
        accepted += 1
    assert 0 < accepted < len(sent), "the write queue is bounded"

    await link.drained()
    rest = link.send([row[:2] for row in sent[accepted:]])
    assert rest is not None
    await asyncio.wait_for(asyncio.gather(*rest), 10)
    await eventually(lambda: consumer.has_all(100), "every event, the refused one sent once, later")
    assert consumer.positions == list(range(1, 101))


async def test_a_publish_the_broker_refuses_fails_the_window_as_nacked(
    amqp_url: str, exchange_name: str
) -> None:
    connection = await aio_pika.connect(amqp_url)
    link = await BrokerLink.open(amqp_url, exchange_name, publish_timeout=5.0)
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(exchange_name, aio_pika.ExchangeType.TOPIC, durable=True)
        full = await channel.declare_queue(
            exclusive=True, arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
        )
        await full.bind(exchange, routing_key="#")
        window = Window(link, sent=0, size=10, wake=lambda: None)
        await window.send_read(rows(1, 3))

        with pytest.raises(PublishFailure) as failed:
            await asyncio.wait_for(settle(window, 3), 10)
        assert failed.value.reason == "nacked"
        await channel.exchange_delete(exchange_name)
    finally:
        await link.close()
        await connection.close()


async def test_a_publish_nobody_routes_fails_the_window_as_returned(link: BrokerLink) -> None:
    window = Window(link, sent=0, size=10, wake=lambda: None)  # no queue bound to the exchange
    await window.send_read(rows(1, 2))

    with pytest.raises(PublishFailure) as failed:
        await asyncio.wait_for(settle(window, 2), 10)
    assert failed.value.reason == "returned"


async def test_a_confirm_that_does_not_come_fails_the_window_after_the_link_timeout(
    amqp_url: str, exchange_name: str, consumer: Consumer, broker_proxy: TcpProxy
) -> None:
    link = await BrokerLink.open(through(broker_proxy, amqp_url), exchange_name, publish_timeout=0.3)
    try:
        window = Window(link, sent=0, size=10, wake=lambda: None)
        broker_proxy.blackhole()
        await window.send_read(rows(1, 2))
        assert window.confirmed() == []  # not overdue yet
        assert 0 < window.time_left() <= 0.3

        await asyncio.sleep(window.time_left())
        with pytest.raises(PublishFailure) as failed:
            window.confirmed()
        assert failed.value.reason == "timeout"
    finally:
        broker_proxy.heal()
        await link.close()


async def test_a_send_waiting_on_a_closed_connection_fails_instead_of_spinning(link: BrokerLink) -> None:
    window = Window(link, sent=0, size=10, wake=lambda: None)
    await link.close()
    assert link.send([row[:2] for row in rows(1, 1)]) is None

    # Nothing will ever take a write again: the read path and the heartbeat must fail, not retry forever.
    with pytest.raises(PublishFailure) as failed:
        await asyncio.wait_for(window.send_read(rows(1, 2)), 5)
    assert failed.value.reason == "connection"
    with pytest.raises(PublishFailure):
        await asyncio.wait_for(link.publish_heartbeat(2), 5)


async def test_a_send_waiting_on_a_channel_the_broker_closed_fails_instead_of_spinning(
    amqp_url: str, exchange_name: str
) -> None:
    link = await BrokerLink.open(amqp_url, exchange_name, publish_timeout=5.0)
    connection = await aio_pika.connect(amqp_url)
    try:
        window = Window(link, sent=0, size=10, wake=lambda: None)
        await (await connection.channel()).exchange_delete(exchange_name)
        await window.send_read(rows(1, 1))  # to a deleted exchange: the broker closes the channel (404)
        await eventually(lambda: not link.is_open, "the channel closed by the broker")
        with pytest.raises(PublishFailure) as failed:
            window.confirmed()
        assert failed.value.reason == "channel"

        with pytest.raises(PublishFailure) as failed:
            await asyncio.wait_for(window.send_read(rows(2, 1)), 5)
        assert failed.value.reason == "channel"
    finally:
        await link.close()
        await connection.close()
