"""What a resource instance declares on the broker, and how it subscribes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from resource_service.settings import ResourceSettings

__all__ = ["subscribe"]


async def subscribe(
    channel: AbstractChannel,
    settings: ResourceSettings,
    on_message: Callable[[AbstractIncomingMessage], Awaitable[None]],
) -> None:
    """Bind an exclusive queue of this instance's to every routing key of the exchange, and consume it.

    Every key ("#"), not only the event types this code knows: the relay treats an unroutable message as a
    failure, and unknown types must still advance the position. Rejected messages go to `<exchange>.dlx`,
    kept for an operator in one bounded `<exchange>.dead` queue (the oldest go first when it is full).
    """
    await channel.set_qos(prefetch_count=settings.prefetch)
    exchange = await channel.declare_exchange(settings.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    dlx = await channel.declare_exchange(
        f"{settings.exchange}.dlx", aio_pika.ExchangeType.FANOUT, durable=True
    )
    dead = await channel.declare_queue(
        f"{settings.exchange}.dead",
        durable=True,
        arguments={"x-max-length": settings.dead_letter_max, "x-overflow": "drop-head"},
    )
    await dead.bind(dlx)
    queue = await channel.declare_queue(
        exclusive=True, auto_delete=True, arguments={"x-dead-letter-exchange": dlx.name}
    )
    await queue.bind(exchange, routing_key="#")
    await queue.consume(on_message)
