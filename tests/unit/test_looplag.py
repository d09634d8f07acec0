"""The loop-lag metric sees a stalled event loop, by how long it was held."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry

from looplag import LoopLag, freeze_startup_heap

STALL = 0.3
INTERVAL = 0.02


def _sample(registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None) -> float:
    value = registry.get_sample_value(name, labels or {})
    assert value is not None, name
    return value


async def _until(holds: Callable[[], bool], pause: float) -> None:
    for _ in range(10_000):
        if holds():
            return
        await asyncio.sleep(pause)
    pytest.fail("the tick never ran")


async def test_a_held_loop_shows_as_lag_in_the_histogram_and_the_gauge() -> None:
    registry = CollectorRegistry()
    lag = LoopLag(registry, interval=INTERVAL)
    lag.start()
    try:
        await _until(lambda: _sample(registry, "tokenlife_event_loop_lag_seconds_count") >= 1, 0.01)
        before = _sample(registry, "tokenlife_event_loop_lag_seconds_count")
        time.sleep(STALL)  # noqa: ASYNC251 - holding the loop is the point
        # Yield until the late tick has run (its timer fell due during the stall), and read what it set.
        await _until(lambda: _sample(registry, "tokenlife_event_loop_lag_seconds_count") > before, 0)
        last = _sample(registry, "tokenlife_event_loop_lag_last_seconds")
        within_100ms = _sample(registry, "tokenlife_event_loop_lag_seconds_bucket", {"le": "0.1"})
        ticks = _sample(registry, "tokenlife_event_loop_lag_seconds_count")
        total = _sample(registry, "tokenlife_event_loop_lag_seconds_sum")
    finally:
        await lag.stop()
    # The tick was due at most one interval after the stall began, so it fired at least STALL - INTERVAL late.
    assert last >= STALL - INTERVAL
    assert ticks - within_100ms >= 1
    assert total >= STALL - INTERVAL


async def test_stop_ends_the_ticks() -> None:
    registry = CollectorRegistry()
    lag = LoopLag(registry, interval=0.01)
    lag.start()
    await _until(lambda: _sample(registry, "tokenlife_event_loop_lag_seconds_count") >= 1, 0.01)
    await lag.stop()
    count = _sample(registry, "tokenlife_event_loop_lag_seconds_count")
    await asyncio.sleep(0.05)
    assert _sample(registry, "tokenlife_event_loop_lag_seconds_count") == count


def test_the_startup_heap_is_set_aside_from_full_collections() -> None:
    made_at_startup = [{"route": i} for i in range(1000)]
    gc.unfreeze()
    try:
        freeze_startup_heap()
        # Frozen: what lives now is never walked by a collection again.
        assert gc.get_freeze_count() >= len(made_at_startup)
        assert not any(d is made_at_startup for d in gc.get_objects(generation=2))
    finally:
        gc.unfreeze()
