"""One round of bench/scale.py: N instances on one transport, measured (memory, CPU, latency, restart storm).

Workers starts the bench/scale_worker.py processes and speaks their line protocol; Round takes the figures.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from bench.fanout_wire import Reports
from bench.scale_load import Load, snapshots_served
from tests.rabbit_nodes import RabbitNode

LOAD = 10.0  # seconds of revocations in a round (1,000 events at 100/s)
IDLE = 5.0  # seconds of heartbeats alone before it: the broker's CPU with the instances connected, no events
DRAIN = 15.0  # seconds after the load for the last instance to apply the last event
PER_PROCESS = 500  # instances per worker process at most (at least 2 processes past N = 10: 2 cores)
SETTLE = 2.0


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (/proc/<pid>/stat, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _ready_within(n: int) -> float:
    return 60.0 + 0.5 * n  # a start or a storm that takes longer is reported as failed


class Workers:
    """The worker processes of a round: N instances split over them."""

    def __init__(self, n: int, config: dict[str, Any], env: dict[str, str]) -> None:
        self.n = n
        self.config = config
        self.env = env
        count = 1 if n <= 10 else max(2, math.ceil(n / PER_PROCESS))
        self.split = [n // count + (1 if i < n % count else 0) for i in range(count)]
        self.procs: list[asyncio.subprocess.Process] = []
        self.logs: list[IO[bytes]] = []
        self.names = {f"w{i}" for i in range(count)}

    async def start(self) -> float:
        """Start every worker; the seconds until all their instances were ready."""
        started = time.monotonic()
        base = {k: v for k, v in os.environ.items() if not k.startswith("TOKENLIFE_")}
        for i, count in enumerate(self.split):
            log = tempfile.TemporaryFile()
            self.logs.append(log)
            config = json.dumps(self.config | {"count": count, "name": f"w{i}"})
            self.procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "bench.scale_worker",
                    config,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=log,
                    env=base | self.env,
                )
            )
        await self._all("ready", _ready_within(self.n))
        return time.monotonic() - started

    async def _line(self, proc: asyncio.subprocess.Process, word: str) -> str:
        assert proc.stdout is not None
        while True:
            raw = await proc.stdout.readline()
            if not raw:
                raise RuntimeError(f"a worker exited: {self._tail()}")
            line = raw.decode().strip()
            if line.startswith(word + " "):
                return line.partition(" ")[2]

    async def _all(self, word: str, within: float) -> list[str]:
        try:
            async with asyncio.timeout(within):
                return list(await asyncio.gather(*(self._line(p, word) for p in self.procs)))
        except TimeoutError:
            raise RuntimeError(
                f"{self.n} instances: no '{word}' within {within:.0f} s: {self._tail()}"
            ) from None

    def _tail(self) -> str:
        if not self.logs:
            return ""
        self.logs[0].seek(0)
        return self.logs[0].read().decode(errors="replace")[-800:]

    def cpu_seconds(self) -> float:
        """The worker processes' CPU so far, together."""
        return sum(process_cpu_seconds(p.pid) for p in self.procs)

    async def tell(self, command: str) -> None:
        """Send a command to every worker, as close together as the pipes allow."""
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(command.encode() + b"\n")
        await asyncio.gather(*(p.stdin.drain() for p in self.procs if p.stdin is not None))

    async def counters(self) -> dict[str, int]:
        """Every worker's counters, summed."""
        await self.tell("counters")
        total: dict[str, int] = {}
        for line in await self._all("counters", 30.0):
            for key, value in json.loads(line).items():
                total[key] = total.get(key, 0) + value
        return total

    async def restart(self) -> float:
        """The restart storm: every instance stops and starts again at once; seconds until all are ready."""
        started = time.monotonic()
        await self.tell("restart")
        await self._all("ready", _ready_within(self.n))
        return time.monotonic() - started

    async def quit(self) -> None:
        """End every worker (killed if it does not end within 30 s)."""
        for proc in self.procs:
            if proc.stdin is not None and proc.returncode is None:
                proc.stdin.close()
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for log in self.logs:
            log.close()


@dataclass
class Round:
    """The figures of one transport at one N."""

    transport: str
    n: int
    node: RabbitNode
    workers: Workers
    load: Load
    reports: Reports
    auth_url: str
    start_s: float = math.nan
    memory_per_instance: float = math.nan  # bytes
    cpu_s: float = math.nan
    deliveries: int = 0
    workers_cpu_s: float = math.nan  # the instances' processes over the same span
    idle_cpu_rate: float = math.nan  # the broker's CPU seconds per second with no revocations (heartbeats)
    window_s: float = math.nan  # the load and its drain: the CPU and the deliveries are counted over it
    latencies_ms: list[float] = field(default_factory=list)
    rate: float = math.nan  # revocations per second the load achieved
    missing: int = 0  # events not applied by every instance within DRAIN
    storm_s: float = math.nan
    storm_snapshots: float = math.nan
    storm_counters: dict[str, int] = field(default_factory=dict)
    failed: str = ""  # why the round ended early
    gap_fills: int = 0  # reads of the events API the instances made over the round (a heartbeat ahead, a gap)

    @property
    def cpu_per_1000(self) -> float:
        """Broker CPU seconds per 1,000 deliveries."""
        return self.cpu_s / self.deliveries * 1000 if self.deliveries else math.nan

    @property
    def cpu_per_1000_above_idle(self) -> float:
        """The same, less what the broker spends with no revocations over as long (heartbeats, its VM)."""
        busy = self.cpu_s - self.idle_cpu_rate * self.window_s
        return busy / self.deliveries * 1000 if self.deliveries else math.nan

    @property
    def instance_cpu_per_delivery(self) -> float:
        """The instances' CPU seconds per message they received (their processes over the round)."""
        return self.workers_cpu_s / self.deliveries if self.deliveries else math.nan

    async def run(self) -> None:
        """Start the instances, then memory, the load (CPU, latency), and the restart storm; a start or a
        storm that does not end in time sets `failed` (why, with the instances' CPU) and ends the round."""
        before = await asyncio.to_thread(self.node.memory)
        started = time.monotonic()
        try:
            self.start_s = await self.workers.start()
        except RuntimeError as exc:
            self.failed = self._why_not_ready("start", started, exc)
        await asyncio.sleep(SETTLE)
        after = await asyncio.to_thread(self.node.memory)
        self.memory_per_instance = (after - before) / self.n
        if self.failed:
            return
        await self._steady()
        try:
            await self._storm()
        except (RuntimeError, httpx.HTTPError) as exc:
            self.failed = self._why_not_ready("restart storm", started, exc)

    def _why_not_ready(self, what: str, since: float, exc: Exception) -> str:
        spent = time.monotonic() - since
        cpu = self.workers.cpu_seconds()
        return (
            f"{self.n} instances ({self.transport}) not all ready within {_ready_within(self.n):.0f} s of the"
            f" {what}: their {len(self.workers.procs)} processes used {cpu:.1f} s of CPU in {spent:.0f} s"
            f" ({cpu / spent:.2f} cores); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores;"
            f" {' '.join(str(exc).split())[-300:]}"
        )

    async def _steady(self) -> None:
        await asyncio.to_thread(lambda: self.node.pid)  # found and checked once, before the clock starts
        idle = self.node.cpu_seconds()
        await asyncio.sleep(IDLE)
        self.idle_cpu_rate = (self.node.cpu_seconds() - idle) / IDLE
        counted = await self.workers.counters()
        self.reports.clear()
        self.load.commits.clear()
        cpu, workers, started = self.node.cpu_seconds(), self.workers.cpu_seconds(), time.monotonic()
        await self.load.run(LOAD)
        self.rate = self.load.rate
        commits = dict(self.load.commits)
        deadline = time.monotonic() + DRAIN
        # Polled: the reports arrive as datagrams, gathered by Reports without a per-position event.
        while time.monotonic() < deadline and len(self._last_applied(commits)) < len(commits):  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        self.cpu_s, self.window_s = self.node.cpu_seconds() - cpu, time.monotonic() - started
        self.workers_cpu_s = self.workers.cpu_seconds() - workers
        now = await self.workers.counters()
        self.deliveries = sum(now.get(k, 0) - counted.get(k, 0) for k in ("events", "heartbeats"))
        self.gap_fills = now.get("gap_fills", 0) - counted.get("gap_fills", 0)
        last = self._last_applied(commits)
        self.missing = len(commits) - len(last)
        self.latencies_ms = [(last[p] - commits[p]) / 1e6 for p in sorted(last)]

    def _last_applied(self, commits: dict[int, int]) -> dict[int, int]:
        """Position -> when the last instance applied it, for the positions every worker reported."""
        by: dict[int, dict[str, int]] = {}
        for name, what, at in self.reports.received:
            if what.isdigit() and int(what) in commits:
                by.setdefault(int(what), {})[name] = at
        return {p: max(w.values()) for p, w in by.items() if len(w) == len(self.workers.names)}

    async def _storm(self) -> None:
        served = await snapshots_served(self.auth_url)
        load = asyncio.create_task(self.load.run(3600))  # revocations go on through the storm
        try:
            self.storm_s = await self.workers.restart()
        finally:
            load.cancel()
            await asyncio.gather(load, return_exceptions=True)
        self.storm_snapshots = await snapshots_served(self.auth_url) - served
        self.storm_counters = await self.workers.counters()
