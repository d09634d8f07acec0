"""bench/scale.py's revocations: appended to the log at a steady rate through the project's own append (the
lock, the projections, the NOTIFY that wakes the relay), each stamped when its commit returned; and the auth
service's count of snapshots served, read from its /metrics."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx

from auth_service import contract as c
from auth_service.db.engine import create_engine
from auth_service.log.store import append
from bench.scale_worker import TOKEN_TTL

RATE = 100.0  # revocations per second
BATCH = 5  # revocations per append, as the auth service's group commit batches them: 20 commits a second


class Load:
    """Appends token revocations to one database's log; `commits` maps each position to its commit time."""

    def __init__(self, database_url: str) -> None:
        self._engine = create_engine(database_url, pool_size=2)
        self.commits: dict[int, int] = {}  # position -> time.monotonic_ns() when its commit returned
        self.rate = 0.0  # the rate the last run achieved (a loaded machine can fall behind RATE)

    async def run(self, seconds: float, rate: float = RATE) -> None:
        """Append `rate` revocations a second for `seconds`, in evenly spaced batches; a batch that falls
        behind is sent at once, never dropped (`rate` then says what was achieved)."""
        period = BATCH / rate
        start = time.monotonic()
        due, sent = start, 0
        try:
            while due - start < seconds:
                # Each token expires after the instances' replay window, as a real one would within its
                # lifetime: a snapshot then holds what a replay reads, no more.
                until = datetime.now(UTC) + timedelta(seconds=TOKEN_TTL)
                events = [
                    c.TokenRevoked(jti=uuid.uuid4().hex, expires_at=until, reason="bench")
                    for _ in range(BATCH)
                ]
                async with self._engine.begin() as conn:
                    appended = await append(conn, events, lock_timeout_ms=5000)
                # The moment a logout would answer 2xx: the promise is counted from there.
                committed = time.monotonic_ns()
                for event in appended:
                    self.commits[event.position or 0] = committed
                sent += len(appended)
                due += period
                await asyncio.sleep(max(0.0, due - time.monotonic()))
        finally:
            self.rate = sent / max(1e-9, time.monotonic() - start)

    async def aclose(self) -> None:
        """Close the engine."""
        await self._engine.dispose()


async def snapshots_served(auth_url: str) -> float:
    """tokenlife_snapshots_served_total, from the auth service's /metrics."""
    async with httpx.AsyncClient(timeout=30) as http:  # a storm keeps the auth service busy
        text = (await http.get(f"{auth_url}/metrics")).text
    for line in text.splitlines():
        if line.startswith("tokenlife_snapshots_served_total "):
            return float(line.split()[1])
    raise RuntimeError("the auth service's /metrics has no tokenlife_snapshots_served_total")
