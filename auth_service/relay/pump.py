"""One leader's publishing on one broker link: read after the last position sent, send, heartbeat, wait; the
broker's confirms and the cursor row follow behind. The Relay (loop.py) leads and reconnects; a Pump lives as
long as one link, and what it achieved (Progress) outlives it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from auth_service import contract as c
from auth_service.relay.leader import LeaderLock
from auth_service.relay.metrics import RelayMetrics
from auth_service.relay.publisher import BrokerLink, PublishFailure
from auth_service.relay.reading import LogReader
from auth_service.relay.wakeup import Waker
from auth_service.relay.window import Window

# The cursor is where a new leader resumes: one that lags by this much only means a few events published
# twice after a takeover, which consumers drop by position (at-least-once, as every other failure).
CURSOR_EVERY = 0.05


@dataclass
class Progress:
    """How far this leader got: confirmed by the broker, written to the cursor row, and whether the current
    link achieved anything (a confirm or a heartbeat: the relay's reconnect backoff starts over then)."""

    confirmed: int = 0
    cursor: int = 0
    progressed: bool = False


class Pump:
    """Publishes the log on one open link, in position order, until the link fails (PublishFailure) or the
    leader stops (cancelled)."""

    def __init__(
        self,
        link: BrokerLink,
        waker: Waker,
        reader: LogReader,
        lock: LeaderLock,
        metrics: RelayMetrics,
        progress: Progress,
        *,
        batch_size: int,
        poll_interval: float,
        heartbeat_interval: float,
    ) -> None:
        self._link = link
        self._waker = waker
        self._log = reader
        self._lock = lock
        self.metrics = metrics
        self._progress = progress
        self._poll_interval = poll_interval
        self._heartbeat_interval = heartbeat_interval
        self.window = Window(link, progress.confirmed, batch_size, waker.wake)
        self._done = False

    def hand_off(self, events: Sequence[c.Event], recorded_at: datetime | None) -> bool:
        """Send what the log writer just committed, if it follows the last position sent (window.py)."""
        return not self._done and self.window.hand_off(events, recorded_at)

    async def keep_up(self) -> bool:
        """Hold the log writer back while the sends trail its commits by more than a window."""
        return not self._done and await self.window.keep_up()

    async def run(self) -> None:
        """Read after the last sent position and send at once; confirms and the cursor follow behind.

        Up to `batch_size` publishes stay outstanding: the next rows are read and sent while earlier confirms
        are on their way, and the cursor UPDATE runs in a task of its own, never between a read and a send.
        The log writer's hand-off (`committed`) sends into the same window between reads. A failed publish
        fails the link; the next one resumes after the last confirmed position.
        """
        link, waker, window = self._link, self._waker, self.window
        loop = asyncio.get_running_loop()
        next_heartbeat = loop.time()
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
                    if window.sent < head <= window.sent + window.room:
                        # Commits the head already shows and this link has not sent (a writer's hand-off
                        # still on its way, a NOTIFY not read yet): a few, so sent first, or the heartbeat
                        # would name a head its consumers lack and each would read the log over HTTP for
                        # it. A backlog past the window does not hold the heartbeat back.
                        await window.send_read(await self._log.batch(window.sent, head - window.sent))
                    await link.publish_heartbeat(head)
                    self._progress.progressed = True
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
            self._done = True  # before any await: no hand-off into a finished window
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
            self._progress.confirmed = position
            self._progress.progressed = True
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
            position = self._progress.confirmed
            if position > self._progress.cursor:
                await self._lock.advance_cursor(position)
                self._progress.cursor = position
                self.metrics.positions(cursor=position)
                await asyncio.sleep(CURSOR_EVERY)
