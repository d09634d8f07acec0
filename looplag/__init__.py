"""How late each service's event loop runs: a tick every `interval` seconds, and how much later it fired.

Anything that holds the loop (CPU work in a callback, a blocking call) delays every request, the relay and
the heartbeats that freshness is built on by the same amount, so the lag is the one number that shows it.
A package of its own, importing neither service nor the command line, because both services export the
same metric and neither may import the other (resource services import only the event contract).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc

from prometheus_client import CollectorRegistry, Gauge, Histogram

__all__ = ["LAG_BUCKETS", "LoopLag", "freeze_startup_heap"]

# Below a millisecond is a healthy loop; the asyncio debug mode calls a callback slow at 100 ms by default.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class LoopLag:
    """Ticks on the running loop every `interval` seconds; exports how late each tick fired."""

    def __init__(self, registry: CollectorRegistry, interval: float = 0.1) -> None:
        self.interval = interval
        self._last = Gauge(
            "tokenlife_event_loop_lag_last_seconds",
            "How late the event loop ran the last periodic tick",
            registry=registry,
        )
        self._lag = Histogram(
            "tokenlife_event_loop_lag_seconds",
            "How late the event loop ran each periodic tick",
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start ticking on the running loop."""
        if self._task is None:
            self._task = asyncio.create_task(self._tick(), name="tokenlife-loop-lag")

    async def stop(self) -> None:
        """Stop ticking."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            # The loop may wake a timer up to its clock resolution early: that is no lag.
            lag = max(0.0, loop.time() - due)
            self._last.set(lag)
            self._lag.observe(lag)


def freeze_startup_heap() -> None:
    """Set what a service built before serving (modules, routes, schemas, settings) aside from the collector.

    Why: a full collection walks every tracked object in the process, and a served app holds hundreds of
    thousands that live as long as it does. Measured on the auth service under 500 logouts/s: full
    collections of 66 to 90 ms each, every few seconds, finding nothing to free, each holding the loop, so
    every request in flight waited that long (6 to 10 ms once frozen). Frozen objects are never walked again
    (refcounting still frees them); the collections that remain walk only what was made since. Call once,
    just before serving.
    """
    gc.collect()
    gc.freeze()
