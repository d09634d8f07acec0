"""The relay's link to RabbitMQ: one connection, one confirm channel, the exchange, and how to publish on it.

Every failure comes out as `PublishFailure` with a reason (the label of the failures counter):

    PublishFailure
      reason "returned"    mandatory publish the broker could not route (no queue bound): basic.return
      reason "nacked"      the broker refused the message (basic.nack)
      reason "timeout"     no confirm within the timeout (a broker or link that stopped answering)
      reason "channel"     the broker closed the channel (e.g. 404: the exchange was deleted)
      reason "connection"  the connection failed or closed

After any failure the link is finished: the caller closes it and opens a new one.

How it publishes. aio-pika and aiormq connect, negotiate, declare, read the broker's frames and settle each
confirmation future (ack, nack, return, or the channel's close). Their publish call handles one message at a
time: a timeout, the channel's lock, one queued write and one socket write each. On this project's machine
that cost a relay alone 140 us of CPU an event (60 us this way), and a quarter of an auth process's CPU at
saturation with the relay in it. So `send` puts a whole run of events on the connection's write queue as one
write, in the shape aiormq's own publish gives each message (its frames, the next delivery tag, a confirmation
future registered on the channel, the message_id by which a return finds it). Delivery tags are numbered in
the order of the writes because `send` never awaits, and because nothing else publishes on this channel: no
aiormq publish can hold a tag whose frames are not queued yet. The window (window.py) holds one deadline for
the confirms instead of a timeout per message.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Protocol, cast

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange
from aiormq import spec
from aiormq.abc import ChannelFrame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from amqpkit import close_connection
from amqpkit.streams import declare_stream
from auth_service import contract as c
from auth_service.broker import StreamSpec

log = logging.getLogger("tokenlife.relay")


class PublishFailure(Exception):
    """A publish or the broker session failed; `reason` says how."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def failure(exc: BaseException) -> PublishFailure:
    """The PublishFailure for an exception from the broker session or a confirmation."""
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


_PERSISTENT = aio_pika.DeliveryMode.PERSISTENT.value

# Ends a message's producer span: None when the broker confirmed it, else why not.
EndSpan = Callable[[BaseException | None], None]


class PublishTraces(Protocol):
    """Producer spans for traced events (auth_service/traces.py, when tracing is on)."""

    def publish(
        self, position: int, payload: dict[str, Any], exchange: str, routing_key: str
    ) -> tuple[dict[str, str], EndSpan] | None:
        """The trace headers of the event's message and the end of its span; None for an untraced event."""
        ...


def _end_span(end: EndSpan, confirmation: asyncio.Future[Any]) -> None:
    if confirmation.cancelled():
        end(PublishFailure("connection", "the publish was cancelled"))
    else:
        end(confirmation.exception())


def _forget(message_ids: dict[str, int], key: str, _: asyncio.Future[Any]) -> None:
    message_ids.pop(key, None)


_BROKER_ERRORS = (aiormq.exceptions.AMQPError, OSError, TimeoutError, ConnectionError, RuntimeError)


class BrokerLink:
    """A connection to RabbitMQ with a publisher-confirm channel and the declared exchange; every publish on
    the channel goes through `send` or `send_heartbeat`."""

    def __init__(
        self,
        connection: AbstractConnection,
        channel: AbstractChannel,
        exchange: AbstractExchange,
        underlay: aiormq.Channel,
        publish_timeout: float,
        traces: PublishTraces | None = None,
    ) -> None:
        self._connection = connection
        self._channel = channel
        self._underlay = underlay
        self._exchange = exchange
        self._timeout = publish_timeout
        self._traces = traces

    @classmethod
    async def open(
        cls,
        amqp_url: str,
        exchange: str,
        *,
        publish_timeout: float,
        stream: StreamSpec | None = None,
        traces: PublishTraces | None = None,
    ) -> BrokerLink:
        """Connect, open a confirm channel that raises on returns, and declare the durable topic exchange
        (and, with `stream`, the stream bound to it, so nothing is published before it can hold it).

        `publish_timeout` bounds the connect and every later publish: a silent broker never hangs the relay.
        With `traces`, a traced event's message carries its trace context in its headers (W3C traceparent, as
        the messaging conventions have it) and its producer span ends with the broker's confirm.
        """
        timeout = publish_timeout
        connection: AbstractConnection | None = None
        try:
            async with asyncio.timeout(timeout):
                connection = await aio_pika.connect(amqp_url, timeout=timeout)
                # on_return_raises: without it aio-pika resolves a returned mandatory publish as a success.
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                declared = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
                if stream is not None:
                    await declare_stream(
                        channel, exchange, max_age=stream.max_age, max_bytes=stream.max_bytes
                    )
                underlay = cast(aiormq.Channel, await channel.get_underlay_channel())
            return cls(connection, channel, declared, underlay, publish_timeout, traces)
        except _BROKER_ERRORS as exc:
            if connection is not None:
                await close_connection(connection)
            raise failure(exc) from exc

    @property
    def is_open(self) -> bool:
        """Whether the connection and channel are still usable."""
        return not self._connection.is_closed and not self._channel.is_closed

    def send(self, events: Sequence[tuple[int, dict[str, Any]]]) -> list[asyncio.Future[Any]] | None:
        """Queue the publishes of `events` (position, contract payload), in order, as one write to the socket;
        one confirmation future each: the broker's ack, or the exception that says why not (see failure).

        None, and nothing queued, when the channel cannot take them at once: closed, or the connection's write
        queue is full (`drained` waits for room).
        """
        channel = self._underlay
        if channel.is_closed or channel.write_queue.full():
            return None  # before any span starts: the caller sends these again once there is room
        frames: list[Any] = []
        message_ids = []
        traced: list[tuple[int, EndSpan]] = []
        for index, (position, payload) in enumerate(events):
            kind = str(payload.get("type", ""))
            message_ids.append(str(payload["event_id"]))
            headers: dict[str, Any] = {"position": position, "prev_position": position - 1}
            if self._traces is not None:
                span = self._traces.publish(position, payload, self._exchange.name, kind)
                if span is not None:
                    headers |= span[0]
                    traced.append((index, span[1]))
            properties = spec.Basic.Properties(
                content_type="application/json",
                delivery_mode=_PERSISTENT,
                message_id=message_ids[-1],
                message_type=kind,
                headers=headers,
            )
            # The payload is already the contract's wire form, position and prev_position included.
            body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
            frames += self._frames(body, kind, properties, mandatory=True)
        confirmations = self._queue(frames, message_ids)
        for index, end in traced:
            if confirmations is None:
                end(PublishFailure("connection", "not sent: the channel closed"))
            else:
                confirmations[index].add_done_callback(partial(_end_span, end))
        return confirmations

    def send_heartbeat(self, head: int) -> asyncio.Future[Any] | None:
        """Queue a heartbeat with the head of the log: transient, not mandatory, confirmed (see `send`)."""
        properties = spec.Basic.Properties(
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT.value,
            message_type=c.HEARTBEAT_TYPE,
        )
        body = c.encode(c.Heartbeat(head_position=head))
        futures = self._queue(self._frames(body, c.HEARTBEAT_TYPE, properties, mandatory=False), [None])
        return None if futures is None else futures[0]

    async def drained(self) -> None:
        """Wait until the connection's writer has taken every queued write (room for `send`), at most the
        publish timeout; PublishFailure at once when the channel or connection has closed (`send` would never
        take anything again)."""
        if self._connection.is_closed:
            raise PublishFailure("connection", "the broker connection closed")
        if self._channel.is_closed or self._underlay.is_closed:
            raise PublishFailure("channel", "the broker closed the channel")
        try:
            async with asyncio.timeout(self._timeout):
                await self._underlay.write_queue.join()
        except _BROKER_ERRORS as exc:
            raise failure(exc) from exc
        await asyncio.sleep(0)  # a caller that retries in a loop always lets the loop run in between

    async def publish_heartbeat(self, head: int) -> None:
        """Publish a heartbeat with the head of the log and wait for its confirm."""
        while (confirmation := self.send_heartbeat(head)) is None:
            await self.drained()
        try:
            async with asyncio.timeout(self._timeout):
                await confirmation
        except _BROKER_ERRORS as exc:
            raise failure(exc) from exc

    @property
    def timeout(self) -> float:
        """How long a publish may wait for its confirm before the link counts as failed."""
        return self._timeout

    def _frames(self, body: bytes, routing_key: str, properties: Any, *, mandatory: bool) -> list[Any]:
        size = self._underlay.max_content_size
        return [
            spec.Basic.Publish(exchange=self._exchange.name, routing_key=routing_key, mandatory=mandatory),
            ContentHeader(properties=properties, body_size=len(body)),
            *(ContentBody(body[i : i + size]) for i in range(0, len(body), size)),
        ]

    def _queue(
        self, frames: list[Any], message_ids: Sequence[str | None]
    ) -> list[asyncio.Future[Any]] | None:
        channel = self._underlay
        if channel.is_closed or channel.write_queue.full():
            return None
        # Framed before any tag is taken: a frame pamqp refuses raises here, and the numbering stays right.
        write = ChannelFrame.marshall(channel_number=channel.number, frames=frames)
        futures = []
        for message_id in message_ids:
            channel.delivery_tag += 1
            confirmation = channel.create_future()
            channel.confirmations[channel.delivery_tag] = confirmation
            if message_id is not None:  # a returned message finds its confirmation by message_id
                channel.message_id_delivery_tag[message_id] = channel.delivery_tag
                confirmation.add_done_callback(partial(_forget, channel.message_id_delivery_tag, message_id))
            futures.append(confirmation)
        channel.write_queue.put_nowait(write)
        return futures

    async def close(self) -> None:
        """Close the connection; bounded (aio-pika gives up waiting for a silent broker after ~2 s)."""
        await close_connection(self._connection)
