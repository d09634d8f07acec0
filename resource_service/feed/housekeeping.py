"""The feed's housekeeping loops: the stall watch (a paused event loop voids older freshness evidence) and
pruning the revocations whose tokens have all expired. Each runs supervised by the feed (loop.py)."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from resource_service.check.freshness import FreshnessTracker, loop_lag
from resource_service.check.state import RevocationState
from resource_service.settings import ResourceSettings

log = logging.getLogger("tokenlife.feed")


class Feed(Protocol):
    """What the loops need of the feed (loop.Feed)."""

    settings: ResourceSettings
    state: RevocationState
    tracker: FreshnessTracker
    counters: Counter[str]
    clock: Callable[[], float]
    wall_clock: Callable[[], float]


async def stall_watch_loop(feed: Feed) -> None:
    """A tick that wakes late measures the loop's own stall; past the bound it voids older evidence."""
    tick = feed.settings.max_staleness / 8
    previous = feed.clock()
    while True:
        await asyncio.sleep(tick)
        now = feed.clock()
        lag = loop_lag(previous, now, tick)
        previous = now
        if feed.tracker.loop_stalled(lag, now):
            feed.counters["loop_stalls"] += 1
            log.warning("event loop stalled %.2f s: refusing until the head is confirmed again", lag)


async def prune_loop(feed: Feed) -> None:
    """Drop the revocations whose every covered token has expired, every prune_interval."""
    while True:
        await asyncio.sleep(feed.settings.prune_interval)
        feed.counters["pruned"] += feed.state.prune(feed.wall_clock())
