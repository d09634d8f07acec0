"""The stream both services agree on: its name, its retention, and how it is declared and bound.

A RabbitMQ stream queue bound to the events exchange with "#" holds one copy of everything the relay
publishes (events and heartbeats), kept by age (`x-max-age`) and capped by size (`x-max-length-bytes`).
The relay declares it (auth_service), `tokenlife broker setup` declares it ahead, and resource instances read
it over RabbitMQ's native stream protocol (resource_service.feed.stream). Declared over AMQP 0.9.1: RabbitMQ
3.9+ with the `rabbitmq_stream` plugin for the reading side (the declaration itself needs only the broker).
"""

from __future__ import annotations

from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel

__all__ = ["STREAM_PORT", "declare_stream", "needed_window", "stream_arguments", "stream_name"]

# The stream protocol's port (the rabbitmq_stream plugin's default).
STREAM_PORT = 5552


def stream_name(exchange: str) -> str:
    """The stream queue bound to an exchange (one per exchange, so per test or per deployment)."""
    return f"{exchange}.stream"


def needed_window(token_lifetime: float, leeway: float, margin: float) -> float:
    """Seconds of history that rebuild an instance's whole state: events older than this cover only tokens
    that have expired (the longest access-token lifetime plus the verifier's leeway), plus a margin for the
    clocks of the broker, the auth service and the instance."""
    return token_lifetime + leeway + margin


def stream_arguments(max_age: int, max_bytes: int) -> dict[str, Any]:
    """The queue arguments of the stream: a stream queue kept `max_age` seconds and at most `max_bytes`."""
    return {"x-queue-type": "stream", "x-max-age": f"{max_age}s", "x-max-length-bytes": max_bytes}


async def declare_stream(channel: AbstractChannel, exchange: str, *, max_age: int, max_bytes: int) -> str:
    """Declare the durable topic exchange and the stream bound to it with "#"; returns the stream's name.

    Declaring again with the same arguments is a no-op; with other ones the broker closes the channel
    (PRECONDITION_FAILED): a retention changed later belongs in a RabbitMQ policy, not in a new declaration.
    """
    declared = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(
        stream_name(exchange), durable=True, arguments=stream_arguments(max_age, max_bytes)
    )
    # Every key: unknown event types must reach readers too, and heartbeats carry the head.
    await queue.bind(declared, routing_key="#")
    return queue.name
