"""The relay's loop: lead, read from the cursor, publish confirmed, advance; see the package docstring."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from auth_service import log as event_log
from auth_service.db import create_engine
from auth_service.relay.leader import LeaderLock
from auth_service.relay.metrics import RelayMetrics
from auth_service.relay.publisher import BrokerLink, PublishFailure
from auth_service.relay.wakeup import Waker
from auth_service.settings import AuthSettings, RelaySettings
from auth_service.tables import event_log as event_log_table

log = logging.getLogger("tokenlife.relay")

_DB_ERRORS = (SQLAlchemyError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)
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
        engine: AsyncEngine | None = None,
        metrics: RelayMetrics | None = None,
    ) -> None:
        settings = settings or RelaySettings()
        self._database_url = database_url
        self._amqp_url = amqp_url
        self._exchange = exchange
        self._engine = engine
        self._heartbeat_interval = settings.heartbeat_interval
        self._poll_interval = settings.poll_interval
        self._publish_timeout = settings.publish_timeout
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
        engine: AsyncEngine | None = None,
        metrics: RelayMetrics | None = None,
    ) -> Relay:
        """A relay configured by the service's settings (`relay` replaces their relay part, if given)."""
        return cls(
            settings.database_url,
            settings.amqp_url.get_secret_value(),
            settings.exchange,
            settings=relay or settings.relay,
            engine=engine,
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
        engine = self._engine or create_engine(self._database_url, pool_size=2)
        self._running = True
        try:
            while True:
                try:
                    acquired = await self._lock.try_acquire()
                except _DB_ERRORS as exc:
                    log.warning("relay: cannot reach the database for the leader lock: %r", exc)
                    acquired = False
                if acquired:
                    await self._lead(engine)
                await asyncio.sleep(self._leader_retry_interval)
        finally:
            self._running = False
            await self._lock.release()
            await asyncio.gather(*self._closing, return_exceptions=True)
            if self._engine is None:
                await engine.dispose()

    async def _lead(self, engine: AsyncEngine) -> None:
        log.info("relay: this instance is the leader")
        self._leading = True
        self.metrics.leader.set(1)
        publishing = asyncio.create_task(self._publish_loop(engine))
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

    async def _publish_loop(self, engine: AsyncEngine) -> None:
        self._cursor = await self._lock.read_cursor()
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
                    await self._pump(engine, link, waker)
                except PublishFailure as failure:
                    self.metrics.failures.labels(reason=failure.reason).inc()
                    log.warning("relay: %s; resuming after position %d", failure, self._cursor)
                    # Heartbeats refresh the head; without a broker, refresh it here, so lag shows the outage.
                    with contextlib.suppress(*_DB_ERRORS):
                        self.metrics.positions(head=await self._read_head(engine))
                except _DB_ERRORS as exc:
                    self.metrics.failures.labels(reason="database").inc()
                    log.warning("relay: database error %r; resuming after position %d", exc, self._cursor)
                finally:
                    self._link = None
                    if link is not None:
                        self._close_later(link)
                backoff = _MIN_BACKOFF if self._progressed else min(backoff * 2, self._max_backoff)
                await asyncio.sleep(backoff)
        finally:
            await waker.close()

    async def _pump(self, engine: AsyncEngine, link: BrokerLink, waker: Waker) -> None:
        loop = asyncio.get_running_loop()
        next_heartbeat = loop.time()
        while True:
            if not link.is_open:
                raise PublishFailure("connection", "the broker connection closed")
            # Cleared before the read: a NOTIFY that lands during the read or the publish still wakes us.
            waker.clear()
            rows, recorded = await self._read_batch(engine)
            if rows:
                await link.publish_events(rows)
                confirmed_at = datetime.now(UTC)
                await self._lock.advance_cursor(rows[-1][0])
                self._cursor = rows[-1][0]
                self._progressed = True
                self.metrics.published.inc(len(rows))
                self.metrics.positions(cursor=self._cursor)
                for at in recorded:
                    self.metrics.publish_latency.observe(max(0.0, (confirmed_at - at).total_seconds()))
            if loop.time() >= next_heartbeat:
                head = await self._read_head(engine)
                await link.publish_heartbeat(head)
                self._progressed = True
                self.metrics.heartbeats.inc()
                self.metrics.positions(head=head)
                next_heartbeat = loop.time() + self._heartbeat_interval
            if len(rows) < self._batch_size:
                await waker.wait(min(self._poll_interval, max(0.0, next_heartbeat - loop.time())))

    async def _read_batch(self, engine: AsyncEngine) -> tuple[list[tuple[int, Any]], list[datetime]]:
        async with asyncio.timeout(max(self._publish_timeout, 1.0)), engine.connect() as conn:
            rows = await event_log.read_payloads_after(conn, self._cursor, self._batch_size)
            if not rows:
                return [], []
            recorded = await conn.execute(
                select(event_log_table.c.recorded_at).where(
                    event_log_table.c.position.between(rows[0][0], rows[-1][0])
                )
            )
            return rows, list(recorded.scalars())

    async def _read_head(self, engine: AsyncEngine) -> int:
        async with asyncio.timeout(max(self._publish_timeout, 1.0)), engine.connect() as conn:
            return await event_log.read_head(conn)

    def _close_later(self, link: BrokerLink) -> None:
        # Closing waits for the broker's close-ok (up to ~2 s when it went silent): reconnect meanwhile.
        task = asyncio.create_task(link.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
