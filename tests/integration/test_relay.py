"""The relay on a real PostgreSQL and RabbitMQ: order, wake-up, restarts, leadership, heartbeats.

Broker faults (cut links, a silent broker, a deleted exchange) are in test_relay_faults.py, which reuses the
helpers and fixtures defined here.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import asyncpg
import pytest
from aio_pika.abc import AbstractIncomingMessage
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from auth_service import contract as c
from auth_service.broker import RelaySettings
from auth_service.db.engine import asyncpg_dsn
from auth_service.log.store import append
from auth_service.relay import Relay
from auth_service.relay.leader import RELAY_LOCK_KEY
from auth_service.relay.metrics import RelayMetrics

pytestmark = pytest.mark.integration

# Short intervals keep the suite fast; every wait below is a deadline on an outcome, not a timed assertion.
FAST: dict[str, Any] = {
    "heartbeat_interval": 0.2,
    "poll_interval": 1.0,
    "publish_timeout": 1.0,
    "leader_retry_interval": 0.2,
    "max_backoff": 0.3,
}
DEADLINE = 15.0


async def eventually(
    check: Callable[[], bool | Awaitable[bool]], what: str, within: float = DEADLINE
) -> None:
    """Poll `check` until it holds; fail naming `what` if it does not within `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = check()
        if result if isinstance(result, bool) else await result:
            return
        if loop.time() > deadline:
            pytest.fail(f"not within {within} s: {what}")
        await asyncio.sleep(0.02)


@dataclass
class Consumer:
    """A queue bound to the test's exchange for every routing key; keeps what it receives."""

    exchange_name: str
    channel: aio_pika.abc.AbstractChannel
    messages: list[AbstractIncomingMessage] = field(default_factory=list)
    heartbeats: list[c.Heartbeat] = field(default_factory=list)
    events_before: list[int] = field(default_factory=list)  # each heartbeat's count of events before it
    queue: aio_pika.abc.AbstractQueue | None = None

    async def bind(self) -> None:
        """Declare the exchange as the relay does, and bind an exclusive queue to it with '#'."""
        exchange = await self.channel.declare_exchange(
            self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
        )
        if self.queue is None:
            self.queue = await self.channel.declare_queue(exclusive=True)
            await self.queue.consume(self._receive, no_ack=True)
        await self.queue.bind(exchange, routing_key="#")

    async def _receive(self, message: AbstractIncomingMessage) -> None:
        if message.type == c.HEARTBEAT_TYPE:
            self.heartbeats.append(c.decode_heartbeat(message.body))
            self.events_before.append(len(self.messages))
        else:
            self.messages.append(message)

    @property
    def positions(self) -> list[int]:
        """Positions of the events received, in arrival order (duplicates included)."""
        return [json.loads(m.body)["position"] for m in self.messages]

    def has_all(self, head: int) -> bool:
        """Whether every position 1..head has arrived at least once."""
        return set(range(1, head + 1)) <= set(self.positions)

    def first_arrivals(self) -> list[int]:
        """Positions in the order of their first arrival (what a deduplicating consumer applies)."""
        seen: dict[int, None] = {}
        for p in self.positions:
            seen.setdefault(p, None)
        return list(seen)


@pytest.fixture
async def consumer(amqp_url: str, exchange_name: str) -> AsyncIterator[Consumer]:
    """A bound test queue; the exchange (durable, declared by the relay too) is deleted afterwards."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        consumer = Consumer(exchange_name, channel)
        await consumer.bind()
        yield consumer
        cleanup = await connection.channel()
        await cleanup.exchange_delete(exchange_name)
    finally:
        await connection.close()


RelayFactory = Callable[..., Awaitable[Relay]]


@pytest.fixture
async def start_relay(
    database_url: str, amqp_url: str, exchange_name: str, consumer: Consumer
) -> AsyncIterator[RelayFactory]:
    """Starts relays on this test's database and exchange; all are stopped before the exchange is deleted."""
    started: list[Relay] = []

    async def start(*, broker_url: str = amqp_url, **options: Any) -> Relay:
        relay = Relay(database_url, broker_url, exchange_name, settings=RelaySettings(**{**FAST, **options}))
        started.append(relay)
        await relay.start()
        return relay

    yield start
    for relay in started:
        await relay.stop()


def revoked() -> c.TokenRevoked:
    return c.TokenRevoked(
        jti=uuid.uuid4().hex, expires_at=datetime.now(UTC) + timedelta(minutes=5), reason="test"
    )


async def append_events(engine: AsyncEngine, count: int) -> int:
    """Commit `count` events in one transaction; returns the new head."""
    async with engine.begin() as conn:
        events = await append(conn, [revoked() for _ in range(count)], lock_timeout_ms=5000)
    position = events[-1].position
    assert position is not None
    return position


async def stored_cursor(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("SELECT position FROM relay_cursor WHERE id = 1"))).scalar_one())


async def lock_holders(database_url: str) -> list[int]:
    """Backend pids holding the relay's leader lock in this test's database."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = $1 AND objid = $2"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            RELAY_LOCK_KEY >> 32,
            RELAY_LOCK_KEY & 0xFFFFFFFF,
        )
        return [int(r["pid"]) for r in rows]
    finally:
        await conn.close()


async def cursor_is(engine: AsyncEngine, position: int) -> bool:
    return await stored_cursor(engine) == position


def failures(relay: Relay, reason: str) -> float:
    return (
        relay.metrics.registry.get_sample_value("tokenlife_relay_publish_failures_total", {"reason": reason})
        or 0.0
    )


async def test_every_committed_event_arrives_once_in_position_order_with_its_headers(
    engine: AsyncEngine, consumer: Consumer, start_relay: RelayFactory
) -> None:
    relay = await start_relay(batch_size=50)
    await append_events(engine, 1)
    await append_events(engine, 7)
    head = await append_events(engine, 180)  # several batches of 50

    await eventually(lambda: consumer.has_all(head), f"events 1..{head} at the consumer")
    assert consumer.positions == list(range(1, head + 1))
    await eventually(lambda: relay.cursor == head, "the cursor at the head")
    assert await stored_cursor(engine) == head

    message = consumer.messages[4]
    body = json.loads(message.body)
    assert message.headers == {"position": 5, "prev_position": 4}
    assert (body["position"], body["prev_position"]) == (5, 4)
    assert message.message_id == body["event_id"]
    assert message.type == message.routing_key == c.EventType.TOKEN_REVOKED.value
    assert message.content_type == "application/json"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert isinstance(c.decode(message.body), c.TokenRevoked)
    assert relay.metrics.registry.get_sample_value("tokenlife_relay_published_events_total") == head
    assert relay.metrics.registry.get_sample_value("tokenlife_relay_publish_latency_seconds_count") == head


async def test_a_commit_is_published_on_notify_without_waiting_for_the_poll(
    engine: AsyncEngine, consumer: Consumer, start_relay: RelayFactory
) -> None:
    # Poll and heartbeat far beyond the deadline: only the NOTIFY can wake the relay in time.
    relay = await start_relay(poll_interval=600, heartbeat_interval=600)
    await eventually(lambda: relay.connected and len(consumer.heartbeats) == 1, "the relay connected")
    head = await append_events(engine, 3)
    await eventually(lambda: consumer.has_all(head), "the events, woken by NOTIFY")
    assert consumer.positions == [1, 2, 3]


async def test_events_committed_while_the_relay_is_down_are_published_after_restart(
    engine: AsyncEngine, consumer: Consumer, start_relay: RelayFactory
) -> None:
    first = await start_relay()
    await append_events(engine, 2)
    await eventually(lambda: consumer.has_all(2), "the first events")
    await first.stop()
    head = await append_events(engine, 5)  # committed while no relay runs

    await start_relay()
    await eventually(lambda: consumer.has_all(head), "the events committed during the outage")
    # Duplicates are allowed across a restart; gaps and reordering are not.
    assert consumer.first_arrivals() == list(range(1, head + 1))
    await eventually(lambda: cursor_is(engine, head), f"the stored cursor at {head}")


async def test_heartbeats_carry_the_head_and_only_the_leader_sends_them(
    engine: AsyncEngine, consumer: Consumer, start_relay: RelayFactory
) -> None:
    leader = await start_relay()
    await eventually(lambda: leader.is_leader, "a leader")
    standby = await start_relay()
    head = await append_events(engine, 4)
    await eventually(
        lambda: any(h.head_position == head for h in consumer.heartbeats), f"a heartbeat with head {head}"
    )
    assert not standby.is_leader
    assert standby.metrics.registry.get_sample_value("tokenlife_relay_heartbeats_total") == 0
    beat = consumer.heartbeats[-1]
    assert beat.type == c.HEARTBEAT_TYPE
    assert abs(datetime.now(UTC) - beat.sent_at) < timedelta(minutes=1)
    assert leader.metrics.registry.get_sample_value("tokenlife_relay_head_position") == head


async def test_two_relays_elect_one_leader_and_the_other_takes_over_when_its_connection_dies(
    engine: AsyncEngine, database_url: str, consumer: Consumer, start_relay: RelayFactory
) -> None:
    relays = [await start_relay(), await start_relay()]
    await eventually(lambda: any(r.is_leader for r in relays), "a leader")
    assert sum(r.is_leader for r in relays) == 1
    assert len(await lock_holders(database_url)) == 1
    head = await append_events(engine, 60)
    await eventually(lambda: consumer.has_all(head), "events from the elected leader")
    assert consumer.positions == list(range(1, head + 1))  # one publisher: no duplicates

    leader = next(r for r in relays if r.is_leader)
    [old_pid] = await lock_holders(database_url)
    admin = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await admin.fetchval("SELECT pg_terminate_backend($1)", old_pid)
    finally:
        await admin.close()
    await eventually(lambda: not leader.is_leader, "the deposed leader stepping down")
    # Either relay may win the next election (the deposed one retries too), but only one.
    await eventually(lambda: any(r.is_leader for r in relays), "a new leader")
    holders = await lock_holders(database_url)
    assert len(holders) == 1
    assert holders != [old_pid]

    head = await append_events(engine, 5)
    await eventually(lambda: consumer.has_all(head), "events after the takeover")
    assert consumer.first_arrivals() == list(range(1, head + 1))


async def test_metrics_of_two_relays_in_one_process_do_not_collide(
    database_url: str, amqp_url: str, exchange_name: str
) -> None:
    one, two = RelayMetrics(CollectorRegistry()), RelayMetrics(CollectorRegistry())
    one.positions(head=5, cursor=3)
    two.positions(head=1, cursor=1)
    assert one.registry.get_sample_value("tokenlife_relay_lag_events") == 2
    assert two.registry.get_sample_value("tokenlife_relay_lag_events") == 0
    relay = Relay(database_url, amqp_url, exchange_name, metrics=one)
    assert relay.metrics is one
