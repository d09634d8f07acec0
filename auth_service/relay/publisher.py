"""The relay's link to RabbitMQ: one connection, one confirm channel, the exchange, and how to publish on it.

Every failure comes out as `PublishFailure` with a reason (the label of the failures counter):

    PublishFailure
      reason "returned"    mandatory publish the broker could not route (no queue bound): basic.return
      reason "nacked"      the broker refused the message (basic.nack)
      reason "timeout"     no confirm within the timeout (a broker or link that stopped answering)
      reason "channel"     the broker closed the channel (e.g. 404: the exchange was deleted)
      reason "connection"  the connection failed or closed

After any failure the link is finished: the caller closes it and opens a new one.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, cast

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange
from aiormq import spec

from auth_service import contract as c

log = logging.getLogger("tokenlife.relay")


class PublishFailure(Exception):
    """A publish or the broker session failed; `reason` says how."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def _failure(exc: BaseException) -> PublishFailure:
    # PublishError (a return) subclasses DeliveryError (a nack), and ChannelClosed subclasses AMQPError:
    # the order of these checks matters.
    if isinstance(exc, aiormq.exceptions.PublishError):
        return PublishFailure("returned", str(exc))
    if isinstance(exc, aiormq.exceptions.DeliveryError):
        return PublishFailure("nacked", str(exc))
    if isinstance(exc, TimeoutError):
        return PublishFailure("timeout", "no answer from the broker in time")
    if isinstance(exc, aiormq.exceptions.ChannelClosed | aiormq.exceptions.ChannelInvalidStateError):
        return PublishFailure("channel", str(exc) or type(exc).__name__)
    return PublishFailure("connection", repr(exc))


_BROKER_ERRORS = (aiormq.exceptions.AMQPError, OSError, TimeoutError, ConnectionError, RuntimeError)


class BrokerLink:
    """A connection to RabbitMQ with a publisher-confirm channel and the declared exchange."""

    def __init__(
        self,
        connection: AbstractConnection,
        channel: AbstractChannel,
        exchange: AbstractExchange,
        publish_timeout: float,
    ) -> None:
        self._connection = connection
        self._channel = channel
        self._exchange = exchange
        self._timeout = publish_timeout

    @classmethod
    async def open(cls, amqp_url: str, exchange: str, *, publish_timeout: float) -> BrokerLink:
        """Connect, open a confirm channel that raises on returns, and declare the durable topic exchange.

        `publish_timeout` bounds the connect and every later publish: a silent broker never hangs the relay.
        """
        timeout = publish_timeout
        connection: AbstractConnection | None = None
        try:
            async with asyncio.timeout(timeout):
                connection = await aio_pika.connect(amqp_url, timeout=timeout)
                # on_return_raises: without it aio-pika resolves a returned mandatory publish as a success.
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                declared = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
            return cls(connection, channel, declared, publish_timeout)
        except _BROKER_ERRORS as exc:
            if connection is not None:
                await _close_quietly(connection)
            raise _failure(exc) from exc

    @property
    def is_open(self) -> bool:
        """Whether the connection and channel are still usable."""
        return not self._connection.is_closed and not self._channel.is_closed

    def send_event(self, position: int, payload: dict[str, Any]) -> asyncio.Task[None]:
        """Start publishing one event; the task ends when the broker confirms it, or raises PublishFailure.

        Sends are pipelined: each task takes the channel's lock in creation order (asyncio locks are FIFO), so
        the frames leave in position order while earlier confirms are still outstanding.
        """
        return asyncio.create_task(self._confirmed(position, payload))

    async def _confirmed(self, position: int, payload: dict[str, Any]) -> None:
        kind = str(payload.get("type", ""))
        properties = spec.Basic.Properties(
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT.value,
            message_id=str(payload["event_id"]),
            message_type=kind,
            headers={"position": position, "prev_position": position - 1},
        )
        # On the channel under aio-pika's, as its Exchange.publish does, without building a Message first, and
        # without waiting for the frames to be written before the next publish may queue its own (wait=False):
        # they still leave in the order they were queued (the channel's lock), and the confirm is awaited.
        # aiormq's Channel (its abstract type does not declare `wait`).
        try:
            channel = cast(aiormq.Channel, await self._channel.get_underlay_channel())
            await channel.basic_publish(
                # The payload is already the contract's wire form, position and prev_position included.
                json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode(),
                exchange=self._exchange.name,
                routing_key=kind,
                properties=properties,
                mandatory=True,
                wait=False,
                timeout=self._timeout,  # bounds the send and the confirm, as one asyncio.timeout
            )
        except _BROKER_ERRORS as exc:
            raise _failure(exc) from exc

    async def publish_heartbeat(self, head: int) -> None:
        """Publish a heartbeat with the head of the log: transient, not mandatory, but confirmed."""
        heartbeat = c.Heartbeat(head_position=head)
        message = aio_pika.Message(
            c.encode(heartbeat),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
            type=c.HEARTBEAT_TYPE,
        )
        try:
            async with asyncio.timeout(self._timeout):
                await self._exchange.publish(message, routing_key=c.HEARTBEAT_TYPE, mandatory=False)
        except _BROKER_ERRORS as exc:
            raise _failure(exc) from exc

    async def close(self) -> None:
        """Close the connection; bounded (aio-pika gives up waiting for a silent broker after ~2 s)."""
        await _close_quietly(self._connection)


async def _close_quietly(connection: AbstractConnection) -> None:
    try:
        await connection.close()
    except _BROKER_ERRORS as exc:
        log.debug("closing the broker connection failed: %r", exc)
    # aiormq ends a connection in tasks that its reader's done callback starts after close() returned: a few
    # passes of the loop let them end, so none is left pending (and destroyed) when the caller's loop stops.
    for _ in range(8):
        await asyncio.sleep(0)
