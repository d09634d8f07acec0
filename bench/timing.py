"""Small timing helpers: per-operation samples in microseconds, median and p99."""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable


def summarise(case: str, samples: list[float], note: str = "") -> dict[str, object]:
    """A result row from samples in microseconds."""
    ordered = sorted(samples)
    return {
        "case": case,
        "n": len(ordered),
        "median_us": statistics.median(ordered),
        "p99_us": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "note": note,
    }


def time_sync(fn: Callable[[], object], n: int, batch: int = 1) -> list[float]:
    """n samples of fn, each the mean over `batch` calls (batch >1 for sub-microsecond operations)."""
    samples = []
    for _ in range(n):
        start = time.perf_counter_ns()
        for _ in range(batch):
            fn()
        samples.append((time.perf_counter_ns() - start) / batch / 1000)
    return samples


async def time_async(fn: Callable[[], Awaitable[object]], n: int) -> list[float]:
    """n samples of an awaitable operation, one call each."""
    samples = []
    for _ in range(n):
        start = time.perf_counter_ns()
        await fn()
        samples.append((time.perf_counter_ns() - start) / 1000)
    return samples
