"""The relay's window on one broker link: the publishes sent and not yet confirmed, in position order.

Two paths fill it, both only with the position right after the last one sent, so the frames leave in
position order, each position once per link:

- the read path (loop.py): the rows read from the log after the last position sent; rows a hand-off sent
  while the read was on its way are skipped;
- the hand-off: the log writer of the same process gives the events it just committed, before it answers
  its requests; sent at once if they follow the last position sent and fit in the window, otherwise left
  to the read path, which NOTIFY wakes as before. It saves the wake-up and the read, and puts the publish
  ahead of the HTTP answers in the event loop.

The log stays the truth: a hand-off only ever carries committed events (the writer calls it after COMMIT
returned), and whatever one misses, the read path sends.

Keeping up (`keep_up`): the writer and the relay share one event loop, and a saturated loop serves the HTTP
side first: measured at 2,700 logouts/s, the relay fell 6,600 events (2.4 s) behind in 3 s and caught up
after the load stopped. So the writer, before each batch, waits while the window's sends trail the commits
it was told of by more than one window: requests queue meanwhile (the next batch is larger, which costs less
per logout), and the process serves the rate at which it can also publish.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from auth_service import contract as c
from auth_service.relay.publisher import BrokerLink, PublishFailure, failure

# (position, commit time when known, the broker's confirmation, when it is overdue on the loop's clock)
Inflight = tuple[int, datetime | None, asyncio.Future[Any], float]
Row = tuple[int, dict[str, Any], datetime | None]

# The longest a writer waits for the relay before one batch: a relay that does not move this long (a broker
# that stopped answering, before the publish timeout fails the link) must not stop the writes with it. A
# quarter of the default bound B (2 s): consumers fill what the relay has not sent from the log over HTTP.
KEEP_UP_WAIT = 0.5


class Window:
    """Sent, unconfirmed publishes on `link`, up to `size`; `sent` is the last position sent."""

    def __init__(self, link: BrokerLink, sent: int, size: int, wake: Callable[[], None]) -> None:
        self.link = link
        self.sent = sent
        self.size = size
        self.inflight: deque[Inflight] = deque()
        self._wake = wake
        self.committed = sent  # the last position the writer committed, as far as it told this window
        self._moved = asyncio.Event()  # set when `sent` moves, for a writer waiting in keep_up
        self._closed = False

    @property
    def room(self) -> int:
        """How many more publishes may be outstanding."""
        return self.size - len(self.inflight)

    def _send(self, rows: Sequence[Row]) -> bool:
        """Send `rows` (following `sent`) in one write; False, and nothing sent, when the link has no room."""
        confirmations = self.link.send([(position, payload) for position, payload, _ in rows])
        if confirmations is None:
            return False
        overdue = asyncio.get_running_loop().time() + self.link.timeout
        for (position, _, recorded), confirmation in zip(rows, confirmations, strict=True):
            self.inflight.append((position, recorded, confirmation, overdue))
        self.sent = rows[-1][0]
        self._moved.set()
        return True

    def confirmed(self) -> list[tuple[int, datetime | None]]:
        """Take the confirmed publishes off the front, in order: (position, commit time).

        A failed publish raises its PublishFailure once it is at the front (the confirmed ones before it are
        returned first), and so does the oldest unconfirmed one past the link's timeout.
        """
        done: list[tuple[int, datetime | None]] = []
        inflight = self.inflight
        while inflight and inflight[0][2].done():
            confirmation = inflight[0][2]
            if not confirmation.cancelled() and confirmation.exception() is None:
                position, recorded, _, _ = inflight.popleft()
                done.append((position, recorded))
                continue
            if done:
                break  # it raises on the next call: the confirms before it count first
            exc = None if confirmation.cancelled() else confirmation.exception()
            raise PublishFailure("connection", "the publish was cancelled") if exc is None else failure(exc)
        if not done and inflight and inflight[0][3] <= asyncio.get_running_loop().time():
            raise failure(TimeoutError())
        return done

    def time_left(self) -> float:
        """Seconds until the oldest unconfirmed publish is overdue (inf with none)."""
        if not self.inflight:
            return float("inf")
        return max(0.0, self.inflight[0][3] - asyncio.get_running_loop().time())

    @property
    def backlog(self) -> int:
        """Committed events (as the writer told) this window has not sent yet."""
        return self.committed - self.sent

    async def keep_up(self) -> bool:
        """Wait while the backlog is more than one window and the link is open, at most KEEP_UP_WAIT seconds;
        whether it waited."""
        if not self._behind():
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + KEEP_UP_WAIT
        while self._behind() and loop.time() < deadline:
            self._moved.clear()
            try:
                async with asyncio.timeout_at(deadline):
                    await self._moved.wait()
            except TimeoutError:
                break
        return True

    def _behind(self) -> bool:
        return self.backlog > self.size and not self._closed and self.link.is_open

    def close(self) -> None:
        """The relay is done with this window (its link failed or it stopped leading): nobody waits on it."""
        self._closed = True
        self._moved.set()

    async def send_read(self, rows: Sequence[Row]) -> None:
        """Send rows read from the log after some earlier `sent`; those already sent (a hand-off may send
        while this waits for room) are skipped."""
        while fresh := [row for row in rows if row[0] > self.sent]:
            if self._send(fresh):
                return
            await self.link.drained()

    def hand_off(self, events: Sequence[c.Event], recorded: datetime | None) -> bool:
        """Send the events a commit just appended, if they follow `sent` and fit; False: left to the read."""
        if events:
            self.committed = max(self.committed, events[-1].position or 0)
        if not events or len(events) > self.room or not self.link.is_open:
            return False
        if [e.position for e in events] != list(range(self.sent + 1, self.sent + 1 + len(events))):
            return False
        # The wire form the log's payload column holds, position and prev_position included.
        if not self._send([(event.position or 0, c.to_json_dict(event), recorded) for event in events]):
            return False
        self._wake()  # the loop takes these confirms as it takes its own
        return True

    def confirmations(self) -> list[asyncio.Future[Any]]:
        """Every outstanding publish's confirmation."""
        return [confirmation for _, _, confirmation, _ in self.inflight]
