"""The relay's loop: lead, read from the cursor, publish confirmed, advance; see the package docstring."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg
from prometheus_client import CollectorRegistry
from sqlalchemy.exc import SQLAlchemyError

from auth_service import contract as c
from auth_service.db.engine import asyncpg_dsn
from auth_service.log import store as event_log
from auth_service.relay.leader import LeaderLock
from auth_service.relay.metrics import RelayMetrics
from auth_service.relay.publisher import BrokerLink, PublishFailure
from auth_service.relay.reading import LogReader
from auth_service.relay.wakeup import Waker
from auth_service.relay.window import Window
from auth_service.settings import AuthSettings, RelaySettings

log = logging.getLogger("tokenlife.relay")

_DB_ERRORS = (SQLAlchemyError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)
_MIN_BACKOFF = 0.05
# The cursor is where a new leader resumes: one that lags by this much only means a few events published
# twice after a takeover, which consumers drop by position (at-least-once, as every other failure).
CURSOR_EVERY = 0.05


class Relay:
    """Publishes the log to the exchange while this instance holds the relay's leader lock.

    Takeover bound: once the leader's database session ends (at once when its process dies), a standby leads
    within `leader_retry_interval` plus one query, and publishes after one broker connect.
    """

    def __init__(
        self,
        database_url: str,
        amqp_url: str,
        exchange: str,
        *,
        settings: RelaySettings | None = None,
        metrics: RelayMetrics | None = None,
    ) -> None:
        settings = settings or RelaySettings()
        self._database_url = database_url
        self._amqp_url = amqp_url
        self._exchange = exchange
        self._confirmed = 0
        self._heartbeat_interval = settings.heartbeat_interval
        self._poll_interval = settings.poll_interval
        self._publish_timeout = settings.publish_timeout
        self._log = LogReader(asyncpg_dsn(database_url), max(settings.publish_timeout, 1.0))
        self._batch_size = max(1, min(settings.batch_size, event_log.MAX_PAGE))
        self._leader_retry_interval = settings.leader_retry_interval
        self._max_backoff = settings.max_backoff
        # A private registry by default, so that two relays in one process never collide; expose
        # `relay.metrics.registry` (or pass RelayMetrics(app_registry)) to serve them.
        self.metrics = metrics if metrics is not None else RelayMetrics(CollectorRegistry())
        self._lock = LeaderLock(
            database_url,
            check_interval=settings.leader_retry_interval,
            check_timeout=max(settings.publish_timeout, 1.0),
            lease_timeout=settings.lease_timeout,
        )
        self._task: asyncio.Task[None] | None = None
        self._running = False
        self._leading = False
        self._link: BrokerLink | None = None
        self._window: Window | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._cursor = 0
        self._progressed = False
        self._opened_links = 0

    @classmethod
    def from_settings(
        cls,
        settings: AuthSettings,
        *,
        relay: RelaySettings | None = None,
        metrics: RelayMetrics | None = None,
    ) -> Relay:
        """A relay configured by the service's settings (`relay` replaces their relay part, if given)."""
        return cls(
            settings.database_url,
            settings.amqp_url.get_secret_value(),
            settings.exchange,
            settings=relay or settings.relay,
            metrics=metrics,
        )

    @property
    def is_leader(self) -> bool:
        """Whether this instance is the one publishing (it holds the lock and its connection is alive)."""
        return self._leading and self._lock.held

    @property
    def connected(self) -> bool:
        """Whether this instance leads and has a usable broker connection."""
        return self.is_leader and self._link is not None and self._link.is_open

    @property
    def ready(self) -> bool:
        """Whether the relay loop is running (leading or standing by).

        A broker outage does not make the relay unready: the log stays the truth and consumers fall back to
        HTTP; it shows as `connected` False, a growing lag and the failures counter.
        """
        return self._running

    @property
    def cursor(self) -> int:
        """The last position this instance saw confirmed (the table's value while it leads)."""
        return self._cursor

    def committed(self, events: Sequence[c.Event], recorded_at: datetime | None = None) -> None:
        """The log writer's hand-off, called right after its COMMIT with the events it appended.

        While this instance leads, they are published at once if they follow the last position sent (see
        window.py); otherwise, or when it does not lead, nothing happens here and the read path publishes
        them. Never awaits, never raises for the writer to handle.
        """
        window = self._window
        if window is not None and window.hand_off(events, recorded_at):
            self.metrics.handed_off.inc(len(events))

    async def keep_up(self) -> None:
        """For the log writer of this process, before each batch: while this instance leads, wait (briefly)
        while the relay trails the writer's commits by more than its window (window.py, keeping up)."""
        window = self._window
        if window is not None and await window.keep_up():
            self.metrics.writer_waits.inc()

    async def start(self) -> None:
        """Run the relay in a background task (for an application's lifespan)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name="tokenlife-relay")

    async def stop(self) -> None:
        """Stop publishing, release leadership and close every connection."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def run(self) -> None:
        """Stand by or lead until cancelled; a crash while leading is logged, and leadership retried."""
        self._running = True
        try:
            while True:
                try:
                    acquired = await self._lock.try_acquire()
                except _DB_ERRORS as exc:
                    log.warning("relay: cannot reach the database for the leader lock: %r", exc)
                    acquired = False
                if acquired:
                    await self._lead()
                await asyncio.sleep(self._leader_retry_interval)
        finally:
            self._running = False
            await self._lock.release()
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def _lead(self) -> None:
        log.info("relay: this instance is the leader")
        self._leading = True
        self.metrics.leader.set(1)
        publishing = asyncio.create_task(self._publish_loop())
        lost = asyncio.create_task(self._lock.wait_lost())
        try:
            done, _ = await asyncio.wait({publishing, lost}, return_when=asyncio.FIRST_COMPLETED)
            if publishing in done:
                publishing.result()
            log.warning("relay: lost the leader lock; stopped publishing")
        except _DB_ERRORS as exc:
            log.warning("relay: database error while taking over (%r); giving up leadership", exc)
            self.metrics.failures.labels(reason="database").inc()
        except Exception:
            # Supervision: a bug must not kill the relay for good, nor keep the lock from a healthy standby.
            log.exception("relay: the publishing loop crashed; giving up leadership")
            self.metrics.failures.labels(reason="internal").inc()
        finally:
            self._leading = False
            self.metrics.leader.set(0)
            for task in (publishing, lost):
                task.cancel()
            await asyncio.gather(publishing, lost, return_exceptions=True)
            await self._lock.release()

    async def _publish_loop(self) -> None:
        self._cursor = self._confirmed = await self._lock.read_cursor()
        self.metrics.positions(cursor=self._cursor)
        waker = Waker(self._database_url, timeout=max(self._publish_timeout, 1.0))
        backoff = _MIN_BACKOFF
        try:
            await waker.connect()
            while True:
                link: BrokerLink | None = None
                self._progressed = False
                try:
                    link = await BrokerLink.open(
                        self._amqp_url, self._exchange, publish_timeout=self._publish_timeout
                    )
                    self._opened_links += 1
                    if self._opened_links > 1:
                        self.metrics.reconnects.inc()
                    self._link = link
                    await self._pump(link, waker)
                except PublishFailure as failure:
                    self.metrics.failures.labels(reason=failure.reason).inc()
                    log.warning("relay: %s; resuming after position %d", failure, self._confirmed)
                    # Heartbeats refresh the head; without a broker, refresh it here, so lag shows the outage.
                    with contextlib.suppress(*_DB_ERRORS):
                        self.metrics.positions(head=await self._log.head())
                except _DB_ERRORS as exc:
                    self.metrics.failures.labels(reason="database").inc()
                    log.warning("relay: database error %r; resuming after position %d", exc, self._confirmed)
                    await self._log.close()
                finally:
                    self._link = None
                    if link is not None:
                        self._close_later(link)
                backoff = _MIN_BACKOFF if self._progressed else min(backoff * 2, self._max_backoff)
                await asyncio.sleep(backoff)
        finally:
            await waker.close()
            await self._log.close()

    async def _pump(self, link: BrokerLink, waker: Waker) -> None:
        """Read after the last sent position and send at once; confirms and the cursor follow behind.

        Up to `batch_size` publishes stay outstanding: the next rows are read and sent while earlier confirms
        are on their way, and the cursor UPDATE runs in a task of its own, never between a read and a send.
        The log writer's hand-off (`committed`) sends into the same window between reads. A failed publish
        fails the link; the next one resumes after the last confirmed position.
        """
        loop = asyncio.get_running_loop()
        next_heartbeat = loop.time()
        window = self._window = Window(link, self._confirmed, self._batch_size, waker.wake)
        advanced = asyncio.Event()
        cursor_task = asyncio.create_task(self._advance_cursor(advanced))
        read = True  # the first pass reads: what was committed before this link
        try:
            while True:
                if not link.is_open:
                    raise PublishFailure("connection", "the broker connection closed")
                if cursor_task.done():
                    cursor_task.result()  # a database error moving the cursor ends this link too
                self._harvest(window, advanced)
                # Read only when a head past what was sent is known, or nothing came for a whole wait (the
                # backstop poll): the log writer handed its commit over already; that NOTIFY reads nothing.
                read = read or waker.behind(window.sent)
                room = window.room
                reading = read and room > 0
                # Cleared before the read: a NOTIFY that lands during the read or the sends still wakes us.
                waker.clear(reading=reading)
                rows = await self._log.batch(window.sent, room) if reading else []
                read = read and not reading  # a read the full window put off is still due
                await window.send_read(rows)
                if loop.time() >= next_heartbeat:
                    head = await self._log.head()
                    await link.publish_heartbeat(head)
                    self._progressed = True
                    self.metrics.heartbeats.inc()
                    self.metrics.positions(head=head)
                    next_heartbeat = loop.time() + self._heartbeat_interval
                if rows and len(rows) == room:
                    read = True
                    continue  # more to read at once (or the window is full: the harvest waits below)
                wait = min(self._poll_interval, max(0.0, next_heartbeat - loop.time()))
                if window.inflight:
                    # Wake on the oldest confirm as well as on a commit, and when the oldest is overdue.
                    wait = min(wait, window.time_left())
                    confirmed = window.inflight[0][2]
                    notified = asyncio.create_task(waker.wait(wait))
                    await asyncio.wait({notified, confirmed}, return_when=asyncio.FIRST_COMPLETED)
                    timed_out = (
                        notified.done()
                        and not notified.cancelled()
                        and notified.exception() is None
                        and notified.result() is False
                    )
                    notified.cancel()
                    await asyncio.gather(notified, return_exceptions=True)
                else:
                    timed_out = not await waker.wait(wait)
                read = read or timed_out  # nothing came for a whole wait: poll
        finally:
            self._window = None  # before any await: no hand-off into a finished window
            window.close()  # and no writer waiting on it
            cursor_task.cancel()
            confirmations = window.confirmations()
            for confirmation in confirmations:
                confirmation.cancel()
            await asyncio.gather(cursor_task, *confirmations, return_exceptions=True)

    def _harvest(self, window: Window, advanced: asyncio.Event) -> None:
        """Take the confirmed publishes off the front, in order; a failed one raises its PublishFailure."""
        now: datetime | None = None
        for position, recorded in window.confirmed():
            now = now or datetime.now(UTC)
            self._confirmed = position
            self._progressed = True
            self.metrics.published.inc()
            if recorded is not None:
                self.metrics.publish_latency.observe(max(0.0, (now - recorded).total_seconds()))
            advanced.set()

    async def _advance_cursor(self, advanced: asyncio.Event) -> None:
        """Write the confirmed position to the cursor row, coalescing: off the read-and-send path, and at most
        once per CURSOR_EVERY, so a busy log costs a few cursor commits a second, not one per confirm."""
        while True:
            await advanced.wait()
            advanced.clear()
            position = self._confirmed
            if position > self._cursor:
                await self._lock.advance_cursor(position)
                self._cursor = position
                self.metrics.positions(cursor=position)
                await asyncio.sleep(CURSOR_EVERY)

    def _close_later(self, link: BrokerLink) -> None:
        # Closing waits for the broker's close-ok (up to ~2 s when it went silent): reconnect meanwhile.
        task = asyncio.create_task(link.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
