"""Open connections of one app, ended when their token does: revoked, expired, or no longer provably fresh.

`LiveConnections` owns the watch index (check/watch.py) and one task. Revocations need no task: the state
tells the index as it folds each event in, and the index resolves the connection's `ended` future at once, so
a revoked socket is closed one event-loop turn after the event is applied. Time does need one: the task
sleeps until the earliest of the next token expiry, the moment the state stops being provably fresh, and a
short tick; then it ends the expired connections, and every connection when the Guard may no longer answer
(policy fail_closed and stale: the same judgement the answer gate makes for a plain request).

`watched_events` wraps an event stream (text/event-stream body) so that it ends with a final `end` event
saying why; the WebSocket side is websocket.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Callable

from resource_service.check.guard import FreshUntil, Guard
from resource_service.check.state import RevocationState
from resource_service.check.verifier import Principal
from resource_service.check.watch import EndReason, Watch, WatchIndex
from resource_service.errors import TokenRevoked

__all__ = ["END_CODES", "Connection", "LiveConnections", "end_frame", "watched_events"]

log = logging.getLogger("tokenlife.live")

# The machine-readable reason of an event stream's `end` event (the auth service's stream says the same).
END_CODES = {
    EndReason.REVOKED: "token_revoked",
    EndReason.EXPIRED: "token_expired",
    EndReason.STALE: "state_stale",
}


class Connection:
    """One watched connection: its principal, and a future resolved with why its token ended."""

    __slots__ = ("ended", "principal", "watch")

    def __init__(self, principal: Principal, ended: asyncio.Future[tuple[EndReason, str]]) -> None:
        self.principal = principal
        self.ended = ended
        self.watch: Watch | None = None

    @property
    def reason(self) -> EndReason | None:
        """Why the token ended, or None while it is still good."""
        return self.ended.result()[0] if self.ended.done() else None


class LiveConnections:
    """The watched connections of one app, and the task that ends them by time (expiry, staleness)."""

    def __init__(
        self,
        guard: Guard,
        state: RevocationState,
        *,
        tick: float = 0.25,
        fresh_until: FreshUntil | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.index = WatchIndex(state)
        self._guard = guard
        self._tick = tick
        self._fresh_until = fresh_until
        self._clock = clock
        self._wall = wall_clock
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        # Read by /metrics: connections ended, by reason ("token revoked", ...).
        self.ended: Counter[str] = Counter()

    def open(self, principal: Principal) -> Connection:
        """Watch a connection of a checked principal; TokenRevoked if it was revoked since its check."""
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[tuple[EndReason, str]] = loop.create_future()

        def on_end(reason: EndReason, detail: str) -> None:
            self.ended[reason.value] += 1
            if not ended.done():
                ended.set_result((reason, detail))

        found = self.index.add(principal.facts, self._guard.dead_at(principal), on_end)
        if not isinstance(found, Watch):
            raise TokenRevoked(found.value)
        connection = Connection(principal, ended)
        connection.watch = found
        # The task may be asleep until a later expiry than this token's.
        self._wake.set()
        return connection

    def release(self, connection: Connection) -> None:
        """The connection closed (whatever the reason): stop watching it."""
        if connection.watch is not None:
            self.index.remove(connection.watch)
            connection.watch = None

    def __len__(self) -> int:
        return len(self.index)

    def check_time(self) -> None:
        """End the connections whose token expired, and all of them if the state may no longer answer."""
        if len(self.index) and not self._guard.may_answer():
            self.index.end_all(EndReason.STALE, "state_stale")
        self.index.expire(self._wall())

    def _delay(self) -> float:
        delay = self._tick
        next_expiry = self.index.next_expiry()
        if next_expiry is not None:
            delay = min(delay, next_expiry - self._wall())
        if self._fresh_until is not None:
            # Wake the moment freshness runs out, not up to a tick later. Already past: the tick paces it.
            left = self._fresh_until.fresh_until - self._clock()
            if left > 0:
                delay = min(delay, left)
        return max(0.0, delay)

    async def run(self) -> None:
        """Check time for ever: at the next expiry, when freshness runs out, or at least every tick."""
        while True:
            try:
                self.check_time()
            except Exception:  # a bug here must not stop expiry and staleness for every connection
                log.exception("checking open connections failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._delay())

    def start(self) -> None:
        """Start the task (the app's lifespan calls it)."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="tokenlife-live-connections")

    async def stop(self) -> None:
        """Stop the task."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def end_frame(reason: EndReason, detail: str) -> bytes:
    """The last event of a stream: `event: end` with why (token_revoked, token_expired, state_stale)."""
    data = json.dumps({"reason": END_CODES[reason], "detail": detail}, separators=(",", ":"))
    return f"event: end\ndata: {data}\n\n".encode()


async def watched_events(
    live: LiveConnections, principal: Principal, source: AsyncIterable[bytes]
) -> AsyncIterator[bytes]:
    """An event stream's body that ends, with an `end` event saying why, when the principal's token does.

    Watched from when the body starts: a token revoked between its check and then gets the `end` event at
    once. The source is closed when the stream ends, whatever the reason.
    """
    chunks = aiter(source)
    try:
        connection = live.open(principal)
    except TokenRevoked as err:
        yield end_frame(EndReason.REVOKED, err.reason)
        await _close(chunks)
        return
    ended = connection.ended
    try:
        while not ended.done():
            step = asyncio.ensure_future(anext(chunks))
            try:
                await asyncio.wait((step, ended), return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not step.done():
                    step.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await step
            if ended.done():
                break
            try:
                chunk = step.result()
            except StopAsyncIteration:
                return
            yield chunk
        yield end_frame(*ended.result())
    finally:
        live.release(connection)
        await _close(chunks)


async def _close(chunks: AsyncIterator[bytes]) -> None:
    close = getattr(chunks, "aclose", None)
    if close is not None:
        await close()
