"""The broker's own fan-out, bench/fanout.py's baseline: aio-pika publish -> delivered to 3 consumers.

Shaped like tokenlife's broker path: a durable topic exchange of its own; a publisher on a confirm channel
that raises on returns, publishing persistent, mandatory messages the size of an event (as the relay does);
three consumers, each with its own connection and exclusive queue bound to "#", prefetch as a resource
service's, decoding and acknowledging each message (as resource_service/feed/broker.py does). A sample is the
time from just before the publish to the last of the three deliveries.

Two placements of the consumers: three processes of their own (bench/fanout_serve.py, each reporting its
delivery time on the shared monotonic clock), as the three resource instances are; and all three in the
benchmark's process, where one wake-up of one process can take all three deliveries.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextlib import AsyncExitStack
from typing import Self

import aio_pika
from aio_pika.abc import AbstractConnection, AbstractExchange, AbstractIncomingMessage

from bench.fanout_serve import PREFETCH, REPORT_ENV
from bench.fanout_wire import Reports
from bench.stack import spawn

CONSUMERS = 3
TIMEOUT = 10.0


class RawFanout:
    """A publisher and CONSUMERS consumers on an exchange of their own; `sample()` times one message.

    `reports` given: the consumers are processes that report to it; otherwise they run in this process.
    """

    def __init__(self, amqp_url: str, reports: Reports | None = None, *, report_to: str = "") -> None:
        self._url = amqp_url
        self._reports = reports
        self._report_to = report_to
        self._exchange_name = f"tokenlife.bench.raw.{uuid.uuid4().hex[:12]}"
        self._stack = AsyncExitStack()
        self._exchange: AbstractExchange | None = None
        self._pids: set[str] = set()
        self._waiting: dict[str, tuple[asyncio.Future[None], list[int]]] = {}

    async def __aenter__(self) -> Self:
        try:
            publisher = await self._connect()
            channel = await publisher.channel(publisher_confirms=True, on_return_raises=True)
            self._exchange = await channel.declare_exchange(
                self._exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
            )
            self._stack.push_async_callback(channel.exchange_delete, self._exchange_name)
            if self._reports is None:
                for _ in range(CONSUMERS):
                    await self._consume_here()
            else:
                await self._consume_apart(self._reports)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def _connect(self) -> AbstractConnection:
        connection = await aio_pika.connect(self._url, timeout=TIMEOUT)
        self._stack.push_async_callback(connection.close)
        return connection

    async def _consume_here(self) -> None:
        consumer = await (await self._connect()).channel()
        await consumer.set_qos(prefetch_count=PREFETCH)
        queue = await consumer.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(self._exchange_name, routing_key="#")
        await queue.consume(self._delivered)

    async def _consume_apart(self, reports: Reports) -> None:
        env = {REPORT_ENV: self._report_to}
        args = ["consume", self._url, self._exchange_name]
        procs = [spawn(self._stack, args, env, module="bench.fanout_serve")[0] for _ in range(CONSUMERS)]
        self._pids = {str(p.pid) for p in procs}
        # Each says "ready" once its queue is bound and consuming.
        await reports.first(self._pids, lambda what: what == "ready", 30.0)

    async def _delivered(self, message: AbstractIncomingMessage) -> None:
        now = time.monotonic_ns()
        json.loads(message.body)
        waiting = self._waiting.get(str(message.message_id))
        if waiting is not None:
            done, arrivals = waiting
            arrivals.append(now)
            if len(arrivals) == CONSUMERS and not done.done():
                done.set_result(None)
        await message.ack()

    async def sample(self, position: int) -> tuple[float, float]:
        """Publish one event-sized message: microseconds to its last delivery, and to its confirm."""
        assert self._exchange is not None, "use RawFanout as an async context manager"
        message_id = uuid.uuid4().hex
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        arrivals: list[int] = []
        self._waiting[message_id] = (done, arrivals)
        try:
            started = time.monotonic_ns()
            await self._exchange.publish(
                aio_pika.Message(
                    _body(message_id, position),
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    message_id=message_id,
                    type="session_revoked",
                    headers={"position": position, "prev_position": position - 1},
                ),
                routing_key="session_revoked",
                mandatory=True,
                timeout=TIMEOUT,
            )
            confirmed = time.monotonic_ns()
            if self._reports is None:
                await asyncio.wait_for(done, TIMEOUT)
            else:
                found = await self._reports.first(self._pids, lambda what: what == message_id, TIMEOUT)
                arrivals = list(found.values())
            return (max(arrivals) - started) / 1000, (confirmed - started) / 1000
        finally:
            del self._waiting[message_id]


def _body(event_id: str, position: int) -> bytes:
    # The shape and size of a session_revoked event on the wire.
    return json.dumps(
        {
            "type": "session_revoked",
            "event_id": str(uuid.UUID(event_id)),
            "position": position,
            "prev_position": position - 1,
            "schema_version": 1,
            "occurred_at": "2025-01-01T00:00:00.000000Z",
            "session_id": str(uuid.uuid4()),
            "user_id": str(uuid.uuid4()),
            "expires_at": "2025-01-01T00:15:00Z",
            "reason": "logout",
        },
        separators=(",", ":"),
    ).encode()
