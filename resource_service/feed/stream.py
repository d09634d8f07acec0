"""The feed's stream transport: the exchange's RabbitMQ stream, read over its native protocol (rstream).

The relay publishes as it always does; a stream bound to the exchange (amqpkit.streams) keeps one copy of
every event and heartbeat for its retention. Each instance reads it from an offset of its own, so the broker
stores a message once however many instances read it, and a restarting instance can rebuild its state from it.

A session, at start (the state never built):
- subscribe from a timestamp, `since` = now - the replay window (token lifetime + leeway + margin), buffering;
- then prove that the stream reaches back that far: the first retained message's (chunk's) timestamp is at or
  before `since`. Probed after the subscription, so retention cannot have moved the stream's start between
  the proof and the read. Events written before `since` cover only tokens that have expired;
- proven: replay. The state starts empty just before the first event read (or at the head a current
  heartbeat names, when no event came first), complete for tokens issued since `since` (the Guard refuses
  older ones as stale). An event at or below that base arriving later means the stream was not in position
  order there (a republish after a lost publish): the proof is void and a snapshot is fetched instead;
- not proven (a young or truncated stream, an empty one): today's catch-up, a snapshot then the buffer.
After a reconnect the state is kept and reading resumes at the next offset; gaps are filled from the events
API as with queues. Heartbeats older than the staleness bound (replayed) prove nothing now and are skipped.
A malformed message cannot be dead-lettered (a stream keeps everything): it is counted, logged, and the
event re-read from the log. The long-poll waits while the replay reads, and takes over once the stream has
gone quiet without a current heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from typing import Any, Protocol

from rstream import AMQPMessage, ConsumerOffsetSpecification, MessageContext, OffsetType, amqp_decoder

from amqpkit.streams import stream_name
from auth_service.contract import HEARTBEAT_TYPE, ContractError, Event, UnknownEvent, decode, decode_heartbeat
from resource_service.check.freshness import FreshnessTracker
from resource_service.check.state import ApplyResult, RevocationState
from resource_service.feed.auth_client import AuthServiceUnavailable, Delivery, LogUnreadable
from resource_service.feed.stream_client import STREAM_ERRORS, first_timestamp
from resource_service.feed.stream_client import consumer as stream_consumer
from resource_service.settings import ResourceSettings

__all__ = ["StreamTransport"]

log = logging.getLogger("tokenlife.feed")

_INITIAL_BACKOFF = 0.1
_CREDIT = 10  # chunks in flight; a full buffer stops granting more, so a replay never outruns the fold


class Feed(Protocol):
    """What a stream session needs of the feed it serves (resource_service.feed.loop.Feed)."""

    settings: ResourceSettings
    state: RevocationState
    tracker: FreshnessTracker
    counters: Any
    live: bool
    replay_pending: bool
    clock: Callable[[], float]
    wall_clock: Callable[[], float]

    @property
    def state_built(self) -> bool: ...
    def note_head(self, position: int) -> None: ...
    def applied(
        self, event: Event | UnknownEvent, result: ApplyResult, delivery: Delivery | None = None
    ) -> None: ...
    def start_replay(self, base: int, since: float) -> bool: ...
    async def fill_gap(self, why: str) -> None: ...
    async def sync_from_log(self, *, snapshot: bool = False) -> None: ...


# (monotonic time received, offset, message); None means the connection closed.
_Item = tuple[float, int, AMQPMessage] | None


class StreamTransport:
    """Runs stream sessions for one Feed, reconnecting with jittered backoff; feed.live while reading."""

    def __init__(self, feed: Feed) -> None:
        self._feed = feed
        self._next_offset: int | None = None  # where a new session resumes
        self._replay_since: float | None = None  # set while a replay waits for its base
        self._replay_base: int | None = None  # the replay's base while its proof stands

    async def run(self) -> None:
        """Session after session, for ever (the feed supervises and cancels it)."""
        feed = self._feed
        backoff = _INITIAL_BACKOFF
        while True:
            reached_live = False
            try:
                reached_live = await self._session()
            except (*STREAM_ERRORS, AuthServiceUnavailable, LogUnreadable) as exc:
                log.warning("stream session ended: %s: %s", type(exc).__name__, exc)
            finally:
                feed.live = False
                feed.replay_pending = False  # the long-poll carries until the next session reads
            feed.counters["reconnects"] += 1
            if reached_live:
                backoff = _INITIAL_BACKOFF
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, feed.settings.reconnect_max_backoff)

    async def _session(self) -> bool:
        feed = self._feed
        s = feed.settings
        buffer: asyncio.Queue[_Item] = asyncio.Queue(maxsize=s.buffer_limit)
        closed = asyncio.Event()

        def lost(_info: Any) -> None:
            closed.set()

        async def received(message: AMQPMessage, context: MessageContext) -> None:
            # Awaiting a full buffer holds rstream's delivery, so no more credit goes out: back-pressure.
            await buffer.put((feed.clock(), context.offset, message))

        consumer = stream_consumer(s, lost)
        replay = not feed.state_built
        since = feed.wall_clock() - s.replay_window
        if replay:
            offset = ConsumerOffsetSpecification(OffsetType.TIMESTAMP, int(since * 1000))
        elif self._next_offset is not None:
            offset = ConsumerOffsetSpecification(OffsetType.OFFSET, self._next_offset)
        else:
            offset = ConsumerOffsetSpecification(OffsetType.NEXT, None)
        try:
            async with asyncio.timeout(s.http_timeout):
                await consumer.start()
                await consumer.subscribe(
                    stream_name(s.exchange),
                    received,
                    decoder=amqp_decoder,
                    offset_specification=offset,
                    initial_credit=_CREDIT,
                )
            if replay:
                await self._prove_or_snapshot(since)
            feed.live = True
            return await self._consume(buffer, closed)
        finally:
            with contextlib.suppress(*STREAM_ERRORS):
                await consumer.close()

    async def _prove_or_snapshot(self, since: float) -> None:
        feed = self._feed
        first = await first_timestamp(feed.settings, feed.settings.http_timeout)
        if first is not None and first <= since:
            log.info(
                "stream reaches back to %.0f (needed %.0f): replaying instead of a snapshot", first, since
            )
            feed.counters["replays"] += 1
            self._replay_since = since
            return
        log.info("stream does not reach back far enough (first chunk %s): snapshot", first)
        feed.counters["replay_refused"] += 1
        await feed.sync_from_log(snapshot=True)
        feed.replay_pending = False

    async def _consume(self, buffer: asyncio.Queue[_Item], closed: asyncio.Event) -> bool:
        feed = self._feed
        quiet = 2 * feed.settings.heartbeat_interval
        while True:
            if buffer.empty():
                if closed.is_set():
                    raise ConnectionError("stream connection closed")
                getting = asyncio.ensure_future(buffer.get())
                closing = asyncio.ensure_future(closed.wait())
                done, _ = await asyncio.wait({getting, closing}, timeout=quiet, return_when="FIRST_COMPLETED")
                closing.cancel()
                if getting not in done:
                    getting.cancel()
                    if feed.replay_pending:
                        # The stream gave what it had and no current heartbeat: the long-poll takes over.
                        feed.replay_pending = False
                        log.info("stream quiet during the replay: long-poll reads the rest")
                    continue
                item = getting.result()
            else:
                item = buffer.get_nowait()
            if item is None:
                raise ConnectionError("stream connection closed")
            received, offset, message = item
            await self._handle(received, message)
            self._next_offset = offset + 1

    async def _handle(self, received: float, message: AMQPMessage) -> None:
        feed = self._feed
        annotations = message.message_annotations or {}
        properties = message.application_properties or {}
        key = annotations.get(b"x-routing-key") or properties.get(b"x-basic-type") or b""
        body = message.body if isinstance(message.body, bytes) else b"".join(message.body or [])
        if key == HEARTBEAT_TYPE.encode():
            await self._heartbeat(received, body)
            return
        try:
            event = decode(body)
            if event.position is None:
                raise ContractError("missing position")
        except ContractError as exc:
            feed.counters["malformed"] += 1
            log.warning("malformed message on the stream: %s", exc)
            # A stream keeps it; whatever event it carried is in the log: read it from there.
            await feed.fill_gap("malformed message")
            return
        if self._replay_since is not None:
            self._start_replay(event.position - 1)
        if self._replay_base is not None and event.position <= self._replay_base:
            # Below the replay's base: the stream is out of position order there, so the proof is void.
            feed.counters["replay_voided"] += 1
            log.warning("event %d below the replay's base %d: snapshot", event.position, self._replay_base)
            self._replay_base = None
            await feed.sync_from_log(snapshot=True)
            return
        result = feed.state.apply(event)
        if result is ApplyResult.GAP:
            await feed.fill_gap(f"event {event.position} after {feed.state.applied_position}")
            result = feed.state.apply(event)
        # The relay's AMQP headers are the message's application properties here (with the trace context).
        feed.applied(event, result, (properties, received, "stream"))

    async def _heartbeat(self, received: float, body: bytes) -> None:
        feed = self._feed
        try:
            heartbeat = decode_heartbeat(body)
        except ContractError as exc:
            feed.counters["malformed"] += 1
            log.warning("malformed heartbeat on the stream: %s", exc)
            return
        age = feed.wall_clock() - heartbeat.sent_at.timestamp()
        sent = feed.tracker.heartbeat(received, age)
        feed.counters["heartbeats"] += 1
        if age > feed.settings.max_staleness:
            # Replayed (or that far behind): it says nothing of the head now, and the events it implies follow
            # it in the stream; a current heartbeat fills what is still missing.
            feed.counters["heartbeats_past"] += 1
            return
        if self._replay_since is not None:
            # No event since `since` before this current heartbeat: every event up to its head was written
            # before `since` or comes later in the stream (then below the base: the proof is void).
            self._start_replay(heartbeat.head_position)
        feed.note_head(heartbeat.head_position)
        if heartbeat.head_position <= feed.state.applied_position:
            feed.tracker.at_head(sent)
            feed.replay_pending = False
        else:
            await feed.fill_gap(f"heartbeat head {heartbeat.head_position}")

    def _start_replay(self, base: int) -> None:
        since, self._replay_since = self._replay_since, None
        assert since is not None
        if not self._feed.start_replay(base, since):
            return  # the long-poll built the state meanwhile (from a snapshot): nothing to prove
        self._replay_base = base
        log.info("replay: state starts after position %d, complete for tokens issued since %.0f", base, since)
