"""The feed's broker transport: one RabbitMQ session at a time, pushing events and relay heartbeats.

Catch-up, at start and after every reconnect: subscribe and buffer -> snapshot at P -> apply -> events after P
over HTTP up to the head -> drain the buffer (anything <= the applied position is a duplicate) -> live. A
prev_position that does not follow the applied position, a heartbeat whose head is ahead, or a malformed
message (dead-lettered) all trigger a gap fill from the events API. When heartbeats stop, the feed's
long-poll takes over (loop.py) while this keeps reconnecting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from aio_pika.exceptions import CONNECTION_EXCEPTIONS

from amqpkit import close_connection
from auth_service.contract import HEARTBEAT_TYPE, ContractError, Event, UnknownEvent, decode, decode_heartbeat
from resource_service.check.freshness import FreshnessTracker
from resource_service.check.state import ApplyResult, RevocationState
from resource_service.feed.auth_client import AuthServiceUnavailable, Delivery, LogUnreadable
from resource_service.feed.topology import subscribe
from resource_service.settings import ResourceSettings

__all__ = ["BrokerTransport"]

log = logging.getLogger("tokenlife.feed")

_BROKER_ERRORS = (*CONNECTION_EXCEPTIONS, TimeoutError)
_INITIAL_BACKOFF = 0.1
# (monotonic time received, message); None means the connection or channel closed.
_Item = tuple[float, AbstractIncomingMessage] | None


class Feed(Protocol):
    """What a broker session needs of the feed it serves (resource_service.feed.loop.Feed)."""

    settings: ResourceSettings
    state: RevocationState
    tracker: FreshnessTracker
    counters: Counter[str]
    live: bool
    clock: Callable[[], float]
    wall_clock: Callable[[], float]

    def note_head(self, position: int) -> None: ...
    def applied(
        self, event: Event | UnknownEvent, result: ApplyResult, delivery: Delivery | None = None
    ) -> None: ...
    async def fill_gap(self, why: str) -> None: ...
    async def sync_from_log(self, *, snapshot: bool = False) -> None: ...


class BrokerTransport:
    """Runs broker sessions for one Feed, reconnecting with jittered backoff; feed.live while consuming."""

    def __init__(self, feed: Feed) -> None:
        self._feed = feed

    async def run(self) -> None:
        """Session after session, for ever (the feed supervises and cancels it)."""
        feed = self._feed
        backoff = _INITIAL_BACKOFF
        while True:
            reached_live = False
            try:
                reached_live = await self._session()
            except (*_BROKER_ERRORS, AuthServiceUnavailable, LogUnreadable) as exc:
                log.warning("broker session ended: %s: %s", type(exc).__name__, exc)
            finally:
                feed.live = False
            feed.counters["reconnects"] += 1
            if reached_live:
                backoff = _INITIAL_BACKOFF
            # Jitter: a broker restart should not see every instance come back in the same millisecond.
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, feed.settings.reconnect_max_backoff)

    async def _session(self) -> bool:
        """One broker connection: subscribe, catch up, consume until it fails; True if it got live."""
        feed = self._feed
        s = feed.settings
        timeout = s.http_timeout
        connection = await asyncio.wait_for(
            aio_pika.connect(s.amqp_url.get_secret_value(), timeout=timeout), timeout
        )
        buffer: asyncio.Queue[_Item] = asyncio.Queue(maxsize=s.buffer_limit)
        overflow = False

        def lost(*_args: Any) -> None:
            with contextlib.suppress(asyncio.QueueFull):
                buffer.put_nowait(None)

        async def buffered(message: AbstractIncomingMessage) -> None:
            nonlocal overflow
            try:
                buffer.put_nowait((feed.clock(), message))
            except asyncio.QueueFull:
                overflow = True

        reached_live = False
        try:
            connection.close_callbacks.add(lost)
            channel = await connection.channel()
            channel.close_callbacks.add(lost)
            await subscribe(channel, s, buffered)
            await feed.sync_from_log(snapshot=True)
            feed.live = reached_live = True
            log.info("feed live at position %d", feed.state.applied_position)
            while True:
                item = await buffer.get()
                if overflow:
                    feed.counters["overflows"] += 1
                    log.warning("buffer overflow (%d messages): catching up again", s.buffer_limit)
                    return reached_live
                if item is None:
                    raise ConnectionError("broker connection or channel closed")
                await self._handle(*item)
        finally:
            await close_connection(connection, timeout)

    async def _handle(self, received: float, message: AbstractIncomingMessage) -> None:
        feed = self._feed
        if (message.routing_key or message.type) == HEARTBEAT_TYPE:
            await self._heartbeat(received, message)
            return
        try:
            event = decode(message.body)
            if event.position is None:
                raise ContractError("missing position")
        except ContractError as exc:
            feed.counters["malformed"] += 1
            log.warning("dead-lettering malformed message %s: %s", message.message_id, exc)
            await message.nack(requeue=False)
            # Whatever event it carried is in the log: read it from there.
            await feed.fill_gap("malformed message")
            return
        result = feed.state.apply(event)
        if result is ApplyResult.GAP:
            await feed.fill_gap(f"event {event.position} after {feed.state.applied_position}")
            result = feed.state.apply(event)
        # The headers carry the revocation's trace context, when it has one (feed/traces.py).
        feed.applied(event, result, (message.headers, received, "queues"))
        await message.ack()

    async def _heartbeat(self, received: float, message: AbstractIncomingMessage) -> None:
        feed = self._feed
        try:
            heartbeat = decode_heartbeat(message.body)
        except ContractError as exc:
            feed.counters["malformed"] += 1
            log.warning("dead-lettering malformed heartbeat: %s", exc)
            await message.nack(requeue=False)
            return
        # It says where the head was when it was sent: a heartbeat delayed in transit (a backlog, a slow link)
        # must not make the instance look fresher than that, and must not keep the long-poll idle either.
        sent = feed.tracker.heartbeat(received, feed.wall_clock() - heartbeat.sent_at.timestamp())
        feed.counters["heartbeats"] += 1
        feed.note_head(heartbeat.head_position)
        if heartbeat.head_position <= feed.state.applied_position:
            feed.tracker.at_head(sent)
        else:
            await feed.fill_gap(f"heartbeat head {heartbeat.head_position}")
        await message.ack()
