"""The feed: keeps a RevocationState at the head of the log, over the broker and over long-poll of the log.

Long-poll (`GET /v1/events?wait=S`): the auth service holds the request until an event commits or S passes,
so a revocation arrives one round trip after its commit, and an idle answer still confirms freshness. The
broker (queues: broker.py; stream: stream.py) pushes events and relay heartbeats; the long-poll then idles,
and takes over the moment heartbeats stop (two intervals). Without a broker, long-poll alone carries all.
This module holds the shared side: reads of the log, applying, freshness, the long-poll, supervision.

Freshness is the time the feed last *knew* it was at the head: a heartbeat whose head it had applied, or an
HTTP read that found nothing newer (freshness.read_as_of says as of when). Past max_staleness the feed says
"stale" and the Guard applies its policy.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from auth_service.contract import ContractError, Event, UnknownEvent, decode
from resource_service.check.freshness import FreshnessTracker, read_as_of
from resource_service.check.guard import Freshness
from resource_service.check.state import ApplyResult, RevocationState, SnapshotLoader
from resource_service.feed import housekeeping
from resource_service.feed.auth_client import AuthClient, AuthServiceUnavailable, Delivery, LogUnreadable
from resource_service.feed.broker import BrokerTransport
from resource_service.feed.snapshot_loading import load_snapshot
from resource_service.feed.stream import StreamTransport
from resource_service.feed.stream_client import StreamUnavailable, check_stream
from resource_service.settings import ResourceSettings

if TYPE_CHECKING:
    from resource_service.feed.traces import FeedTraces

__all__ = ["Feed", "LogUnreadable"]

log = logging.getLogger("tokenlife.feed")

_INITIAL_BACKOFF = 0.1


class Feed:
    """Keeps one RevocationState current; start() runs its supervised background tasks, stop() ends them."""

    def __init__(
        self,
        settings: ResourceSettings,
        state: RevocationState,
        client: AuthClient,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.state = state
        self._client = client
        self.clock = clock
        self.wall_clock = wall_clock
        self._sync_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self.tracker = FreshnessTracker(settings.max_staleness, settings.heartbeat_interval, clock())
        self._snapshot_needed = True
        self.head = 0
        self.live = False  # a broker session is consuming
        self.broker = bool(settings.amqp_url.get_secret_value())
        # What carries revocations: "queues" or "stream" (with a broker), or "long_poll" alone.
        self.transport = settings.transport if self.broker else "long_poll"
        # While a stream replay reads, the long-poll waits (it would fetch a snapshot the replay saves).
        self.replay_pending = False
        # Tokens issued before this (wall clock) are refused as stale: a replay's state holds nothing older.
        self.complete_since = -math.inf
        # Read by /metrics: malformed, gap_fills, polls, snapshots, reconnects, overflows, ...
        self.counters: Counter[str] = Counter()
        self.crashes: Counter[str] = Counter()
        # Hooks told, for each event that changed the state, the seconds from its occurred_at to its apply
        # here, and the exemplar of its trace when traced (metrics add a histogram's observe).
        self.on_applied: list[Callable[[float, dict[str, str] | None], None]] = []
        self.traces: FeedTraces | None = None  # the apply spans, when tracing is on (traces.py)

    # --- freshness ---------------------------------------------------------------------------------------

    @property
    def caught_up(self) -> bool:
        """Whether the state reached the head of the log at least once (ready from then on)."""
        return self.tracker.caught_up

    def staleness(self) -> float:
        """Seconds since the feed last knew it was at the head (infinite before that)."""
        return self.tracker.staleness(self.clock())

    def freshness(self) -> Freshness:
        """The Guard's view: fresh, stale, or unsynced before the first catch-up."""
        return self.tracker.freshness(self.clock())

    def note_head(self, position: int) -> None:
        """Remember a head position seen (the highest wins)."""
        self.head = max(self.head, position)

    # --- lifecycle ---------------------------------------------------------------------------------------

    @property
    def state_built(self) -> bool:
        """Whether the state was built once (from a snapshot or a replay); only events after it are read."""
        return not self._snapshot_needed

    def start_replay(self, base: int, since: float) -> bool:
        """The stream proved no event up to `base` still matters: start the state empty there, complete for
        tokens issued since `since`; False if the state was built meanwhile."""
        if not self._snapshot_needed or not SnapshotLoader(self.state, base).commit():
            return False
        self._snapshot_needed = False
        self.complete_since = since
        return True

    async def start(self) -> None:
        """Start the long-poll, the broker session (when configured) and the pruner, each supervised.

        With the stream transport, its protocol is checked first: in production an unreachable one raises
        StreamUnavailable; in dev mode it is a warning, and long-poll carries everything.
        """
        self.tracker.restart(self.clock())
        if self.transport == "stream":
            try:
                await check_stream(self.settings)
            except StreamUnavailable as exc:
                if self.settings.env != "dev":
                    raise
                log.warning("%s: revocations arrive by long-poll alone (dev mode)", exc)
                self.broker, self.transport = False, "long_poll"
        runs: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("long-poll", self._long_poll_loop),
            ("pruner", partial(housekeeping.prune_loop, self)),
            ("stall-watch", partial(housekeeping.stall_watch_loop, self)),
        ]
        if self.transport == "stream":
            # Until its first session decides between a replay and a snapshot (or ends).
            self.replay_pending = not self.state_built
            runs.append(("stream", StreamTransport(self).run))
        elif self.broker:
            runs.append(("broker", BrokerTransport(self).run))
        else:
            log.warning(
                "no TOKENLIFE_AMQP_URL: revocations arrive by long-poll of the auth service's log alone"
            )
        for name, run in runs:
            self._tasks.append(asyncio.create_task(self._supervise(name, run), name=f"tokenlife-feed-{name}"))

    async def stop(self) -> None:
        """Cancel every task and wait for them (the broker session closes its connection)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self.live = False

    async def _supervise(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        backoff = _INITIAL_BACKOFF
        while True:
            try:
                await run()
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug must not silently end revocation updates: log it, count it, start the task again.
                log.exception("feed task %s crashed; restarting", name)
                self.crashes[name] += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.settings.reconnect_max_backoff)

    # --- the log over HTTP -------------------------------------------------------------------------------

    async def sync_from_log(self, *, snapshot: bool = False) -> None:
        """Bring the state to the head of the log over HTTP (snapshot first when asked or never loaded)."""
        async with self._sync_lock:
            if snapshot or self._snapshot_needed:
                body = await self._client.snapshot_body()
                try:
                    # In steps, awaiting between them; refused (False) when older than what we applied
                    # meanwhile: the events after it still apply.
                    position, loaded = await load_snapshot(self.state, body)
                except ContractError as exc:
                    raise AuthServiceUnavailable(f"unreadable snapshot: {exc}") from None
                self._snapshot_needed = False
                if loaded:
                    self.complete_since = -math.inf  # a snapshot holds every live revocation, however old
                self.note_head(position)
                self.counters["snapshots"] += 1
            while True:
                started = self.clock()
                (page, sent_after), traced = await self._client.page(
                    self.state.applied_position, self.settings.page_size
                )
                self.note_head(page.head)
                received = self.clock()
                for raw in page.events:
                    self._apply_logged(raw, traced, received)
                if self.state.applied_position >= page.head:
                    # Nothing newer than what we hold existed when the request left: at the head as of then.
                    self.tracker.at_head(started + sent_after)
                    return
                if not page.events:
                    raise LogUnreadable(
                        f"empty page after {self.state.applied_position} below head {page.head}"
                    )

    def _apply_logged(self, raw: dict[str, Any], traced: dict[int, Any], received: float) -> None:
        try:
            event = decode(raw)
        except ContractError as exc:
            # Skipping it could skip a revocation for good; staying behind makes the instance stale instead.
            self.counters["log_unreadable"] += 1
            raise LogUnreadable(f"event at position {raw.get('position')!r}: {exc}") from None
        result = self.state.apply(event)
        if result is ApplyResult.GAP:
            raise LogUnreadable(f"event {event.position} does not follow {self.state.applied_position}")
        self.applied(event, result, (traced.get(event.position or 0), received, "long_poll"))

    def applied(self, event: Event | UnknownEvent, result: ApplyResult, via: Delivery | None = None) -> None:
        """Account for an applied event: the head it proves; its delay and span when it changed the state."""
        if event.position is not None:
            self.note_head(event.position)
        if result in (ApplyResult.CHANGED, ApplyResult.ADVANCED):
            exemplar = None
            if self.traces is not None and via is not None:
                exemplar = self.traces.processed(event, result, via, self.clock())
            delay = max(0.0, self.wall_clock() - event.occurred_at.timestamp())
            for hook in self.on_applied:
                hook(delay, exemplar)

    async def fill_gap(self, why: str) -> None:
        """Read the log up to its head; a failure is logged (the long-poll and the next heartbeat retry)."""
        self.counters["gap_fills"] += 1
        try:
            await self.sync_from_log()
        except (AuthServiceUnavailable, LogUnreadable) as exc:
            # The long-poll and the next heartbeat try again; until then staleness grows.
            log.warning("gap fill (%s) failed: %s", why, exc)

    def _hold(self) -> float:
        # At most half the staleness bound: the evidence of one answer must cover the wait for the next.
        return min(self.settings.long_poll_wait, self.settings.max_staleness / 2)

    def _broker_carries(self) -> bool:
        return self.broker and self.caught_up and not self.tracker.heartbeats_silent(self.clock())

    async def _long_poll_loop(self) -> None:
        idle = min(self.settings.heartbeat_interval, self.settings.poll_interval) / 4
        took_over = False
        while True:
            if self._broker_carries() or self.replay_pending:
                took_over = True
                await asyncio.sleep(idle)
                continue
            self.counters["polls"] += 1
            # The heartbeats just went silent, so the evidence they gave is already two intervals old: the
            # first read answers at once, and the holds start from the head it confirms.
            hold = 0.0 if took_over else self._hold()
            took_over = False
            try:
                await self.long_poll(hold)
            except (AuthServiceUnavailable, LogUnreadable) as exc:
                self.counters["poll_failures"] += 1
                log.debug("long-poll of the log failed: %s", exc)
                await asyncio.sleep(self.settings.poll_interval)

    async def long_poll(self, hold: float) -> None:
        """One long-poll of the log: apply what it brings; an answer at the head confirms freshness."""
        if self._snapshot_needed:
            await self.sync_from_log()
            return
        # Not under the sync lock: a gap fill or a broker catch-up must not wait for a hold to end. The
        # state only moves forward, so what this page brings is either new or a duplicate.
        started = self.clock()
        (page, sent_after), traced = await self._client.page(
            self.state.applied_position, self.settings.page_size, wait=hold
        )
        received = self.clock()
        # A request sent to another auth URL (the current one failed or hung) left later, without a hold:
        # its answer proves the head as of its own sending.
        sent = min(received, started + sent_after)
        async with self._sync_lock:
            self.note_head(page.head)
            for raw in page.events:
                self._apply_logged(raw, traced, received)
            self.counters["long_poll_events"] += len(page.events)
            if self.state.applied_position >= page.head:
                self.tracker.at_head(read_as_of(sent, received, page.held))
