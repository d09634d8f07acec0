"""The relay's loop: stand by or lead, and while leading keep a broker link open (reconnecting with
backoff) for a Pump (pump.py) to publish on; see the package docstring."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import datetime

import asyncpg
from prometheus_client import CollectorRegistry
from sqlalchemy.exc import SQLAlchemyError

from auth_service import contract as c
from auth_service.broker import RelaySettings, StreamSpec
from auth_service.db.engine import asyncpg_dsn
from auth_service.log import store as event_log
from auth_service.relay.leader import LeaderLock
from auth_service.relay.metrics import RelayMetrics
from auth_service.relay.publisher import BrokerLink, PublishFailure, PublishTraces
from auth_service.relay.pump import Progress, Pump
from auth_service.relay.reading import LogReader
from auth_service.relay.wakeup import Waker
from auth_service.settings import AuthSettings

log = logging.getLogger("tokenlife.relay")

# TargetServerAttributeNotMatched: each server of a multi-host URL answered, none takes writes (mid-failover).
_DB_ERRORS = (
    SQLAlchemyError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.TargetServerAttributeNotMatched,
    OSError,
    TimeoutError,
)
_MIN_BACKOFF = 0.05


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
        stream: StreamSpec | None = None,
        traces: PublishTraces | None = None,
    ) -> None:
        settings = settings or RelaySettings()
        self._stream = stream
        self._traces = traces  # producer spans of the events this process committed traced
        self._database_url = database_url
        self._amqp_url = amqp_url
        self._exchange = exchange
        self._progress = Progress()
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
        self._pump: Pump | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._opened_links = 0

    @classmethod
    def from_settings(
        cls,
        settings: AuthSettings,
        *,
        relay: RelaySettings | None = None,
        metrics: RelayMetrics | None = None,
        traces: PublishTraces | None = None,
    ) -> Relay:
        """A relay configured by the service's settings (`relay` replaces their relay part, if given)."""
        return cls(
            settings.database_url,
            settings.amqp_url.get_secret_value(),
            settings.exchange,
            settings=relay or settings.relay,
            metrics=metrics,
            stream=settings.stream,
            traces=traces,
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
        return self._progress.cursor

    def committed(self, events: Sequence[c.Event], recorded_at: datetime | None = None) -> None:
        """The log writer's hand-off, called right after its COMMIT with the events it appended.

        While this instance leads, they are published at once if they follow the last position sent (see
        window.py); otherwise, or when it does not lead, nothing happens here and the read path publishes
        them. Never awaits, never raises for the writer to handle.
        """
        pump = self._pump
        if pump is not None and pump.hand_off(events, recorded_at):
            self.metrics.handed_off.inc(len(events))

    async def keep_up(self) -> None:
        """For the log writer of this process, before each batch: while this instance leads, wait (briefly)
        while the relay trails the writer's commits by more than its window (window.py, keeping up)."""
        pump = self._pump
        if pump is not None and await pump.keep_up():
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
        progress = self._progress
        progress.cursor = progress.confirmed = await self._lock.read_cursor()
        self.metrics.positions(cursor=progress.cursor)
        waker = Waker(self._database_url, timeout=max(self._publish_timeout, 1.0))
        backoff = _MIN_BACKOFF
        try:
            await waker.connect()
            while True:
                link: BrokerLink | None = None
                progress.progressed = False
                try:
                    link = await BrokerLink.open(
                        self._amqp_url,
                        self._exchange,
                        publish_timeout=self._publish_timeout,
                        stream=self._stream,
                        traces=self._traces,
                    )
                    self._opened_links += 1
                    if self._opened_links > 1:
                        self.metrics.reconnects.inc()
                    self._link = link
                    self._pump = Pump(
                        link,
                        waker,
                        self._log,
                        self._lock,
                        self.metrics,
                        progress,
                        batch_size=self._batch_size,
                        poll_interval=self._poll_interval,
                        heartbeat_interval=self._heartbeat_interval,
                    )
                    await self._pump.run()
                except PublishFailure as failure:
                    self.metrics.failures.labels(reason=failure.reason).inc()
                    log.warning("relay: %s; resuming after position %d", failure, progress.confirmed)
                    # Heartbeats refresh the head; without a broker, refresh it here, so lag shows the outage.
                    with contextlib.suppress(*_DB_ERRORS):
                        self.metrics.positions(head=await self._log.head())
                except _DB_ERRORS as exc:
                    self.metrics.failures.labels(reason="database").inc()
                    log.warning(
                        "relay: database error %r; resuming after position %d", exc, progress.confirmed
                    )
                    await self._log.close()
                finally:
                    self._link = None
                    self._pump = None
                    if link is not None:
                        self._close_later(link)
                backoff = _MIN_BACKOFF if progress.progressed else min(backoff * 2, self._max_backoff)
                await asyncio.sleep(backoff)
        finally:
            await waker.close()
            await self._log.close()

    def _close_later(self, link: BrokerLink) -> None:
        # Closing waits for the broker's close-ok (up to ~2 s when it went silent): reconnect meanwhile.
        task = asyncio.create_task(link.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
