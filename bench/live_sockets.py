"""Real WebSockets held open on one resource instance, closed when their token is revoked.

On a real stack (bench/stack.py: `tokenlife auth serve` with its relay on RabbitMQ, `tokenlife resource
serve` under uvicorn), client processes (bench/live_sockets_client.py) open SOCKETS WebSockets to the sample's
ticking feed (`/v1/ticks`, a tick a minute so that the ticks cost nothing), spread over SESSIONS logins of
their own. Measured:
- the resource process's memory per open socket: VmRSS (/proc/<pid>/status) after opening them against
  before, divided by the count (the socket, its tasks, buffers and its watch);
- logout -> close received: one more login opens one socket, its session is logged out, and the time from
  the logout's 2xx until that client has the close (1008 "token revoked") is one sample; interleaved with it,
  round by round, the request path's propagation (bench/propagation.py's sample: logout's 2xx -> the same
  instance answers 401 to GET /v1/whoami) as the baseline of the target;
- after each sample, that none of the SOCKETS others was closed (a wrong close is a failure of the row).

TOKENLIFE_BENCH_SOCKETS (default 10,000) and TOKENLIFE_BENCH_SOCKET_ROUNDS (default 50 of each) make it
smaller; `python -m bench.live_sockets` runs it alone. The cost of applying one event with and without
watched connections is bench/live_connections.py's (in process, where an apply can be timed alone).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bench import propagation
from bench.live_sockets_client import raise_fd_limit
from bench.results import Results, median_p99
from bench.stack import Stack, StackUnavailable, login, running_stack

SOCKETS = int(os.environ.get("TOKENLIFE_BENCH_SOCKETS", "10000"))
ROUNDS = int(os.environ.get("TOKENLIFE_BENCH_SOCKET_ROUNDS", "50"))
SESSIONS = 50  # logins the held sockets are spread over (each login costs an argon2 hash)
PER_HOLDER = 2500  # sockets a client process holds, at most 4 processes
TICK = 60.0  # seconds between ticks: the held sockets stay quiet
GIVE_UP = 15.0
SETTLE = 1.0  # seconds between the last socket opened and the memory read
MARGIN_MS = 5.0


@dataclass
class Figures:
    """What one run measured."""

    sockets: int
    opened: int = 0
    failed: int = 0
    error: str = ""  # the commonest failure to open, per client process
    open_s: float = 0.0
    rss_before: int = 0
    rss_after: int = 0
    watched: float | None = None  # the instance's tokenlife_watched_connections once they are open
    close_us: list[float] = field(default_factory=list)
    request_us: list[float] = field(default_factory=list)
    wrong: dict[str, int] = field(default_factory=dict)  # held sockets the server closed, by code and reason


class BenchFailed(Exception):
    """A sample could not be taken (an unexpected answer or close, or nothing within GIVE_UP)."""


def vm_rss(pid: int) -> int:
    """The process's resident memory, bytes (VmRSS of /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchFailed(f"no VmRSS for process {pid}")


@dataclass
class Holders:
    """The client processes holding the sockets."""

    procs: list[asyncio.subprocess.Process] = field(default_factory=list)

    async def start(self, url: str, count: int, tokens: list[str], figures: Figures) -> None:
        """Open `count` sockets over the processes; how many opened and failed go to `figures`."""
        shares = [PER_HOLDER] * (count // PER_HOLDER) + ([count % PER_HOLDER] if count % PER_HOLDER else [])
        for share in shares:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.live_sockets_client",
                url,
                str(share),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            self.procs.append(proc)
            assert proc.stdin is not None
            proc.stdin.write((json.dumps(tokens) + "\n").encode())
        answers = [await self._line(proc, 120.0) for proc in self.procs]
        figures.opened = sum(int(a["opened"]) for a in answers)
        figures.failed = sum(int(a["failed"]) for a in answers)
        figures.error = ", ".join(str(a["error"]) for a in answers if a["error"])

    async def closes(self) -> dict[str, int]:
        """How the server closed any of the held sockets so far, by code and reason."""
        codes: dict[str, int] = {}
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(b"closes\n")
            for code, n in dict((await self._line(proc, 10.0))["codes"]).items():
                codes[code] = codes.get(code, 0) + n
        return codes

    async def _line(self, proc: asyncio.subprocess.Process, within: float) -> dict[str, Any]:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), within)
        if not line:
            raise BenchFailed(f"a client process exited ({await proc.wait()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def stop(self) -> None:
        """Tell every process to close its sockets and exit; kill what does not."""
        for proc in self.procs:
            if proc.stdin is not None and proc.returncode is None:
                with contextlib.suppress(ConnectionError):
                    proc.stdin.write(b"exit\n")
                    await proc.stdin.drain()
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def close_sample(auth: httpx.AsyncClient, stack: Stack, ws_url: str) -> float:
    """One socket's logout -> close received, microseconds (negative: the close came before the 2xx)."""
    token, _ = await login(auth, stack)
    bearer = {"Authorization": f"Bearer {token}"}
    async with connect(ws_url, additional_headers=bearer, ping_interval=None, close_timeout=1) as ws:
        await asyncio.wait_for(ws.recv(), GIVE_UP)
        closed_at = 0
        closed = asyncio.get_running_loop().create_future()

        async def watch() -> None:
            nonlocal closed_at
            with contextlib.suppress(ConnectionClosed):
                async for _ in ws:
                    pass
            closed_at = time.perf_counter_ns()
            closed.set_result(None)

        watcher = asyncio.create_task(watch())
        out = await auth.post(f"{stack.auth_url}/v1/auth/logout", headers=bearer)
        started = time.perf_counter_ns()
        if out.status_code != 200:
            watcher.cancel()
            raise BenchFailed(f"logout answered {out.status_code}")
        try:
            await asyncio.wait_for(closed, GIVE_UP)
        except TimeoutError as exc:
            watcher.cancel()
            raise BenchFailed(f"socket still open {GIVE_UP:.0f} s after logout") from exc
        if (ws.close_code, ws.close_reason) != (1008, "token revoked"):
            raise BenchFailed(f"socket closed {ws.close_code} {ws.close_reason!r}, not 1008 'token revoked'")
        return (closed_at - started) / 1000


async def _watched(resource_url: str) -> float | None:
    async with httpx.AsyncClient(timeout=5) as http:
        text = (await http.get(f"{resource_url}/metrics")).text
    for line in text.splitlines():
        if line.startswith("tokenlife_watched_connections "):
            return float(line.split()[1])
    return None


async def measure(stack: Stack, sockets: int = SOCKETS, rounds: int = ROUNDS) -> Figures:
    """Open the sockets, then the interleaved rounds; every figure of the run."""
    ws_url = stack.resource_url.replace("http://", "ws://") + f"/v1/ticks?interval={TICK:g}"
    figures = Figures(sockets)
    holders = Holders()
    async with (
        httpx.AsyncClient(timeout=10) as auth,
        httpx.AsyncClient(base_url=stack.resource_url, timeout=10) as resource,
    ):
        await close_sample(auth, stack, ws_url)  # warm both paths before the memory baseline
        await propagation.sample(auth, resource, stack, 0.0)
        tokens = [(await login(auth, stack))[0] for _ in range(min(SESSIONS, sockets))]
        figures.rss_before = vm_rss(stack.resource_pid)
        began = time.monotonic()
        try:
            await holders.start(ws_url, sockets, tokens, figures)
            figures.open_s = time.monotonic() - began
            await asyncio.sleep(SETTLE)
            figures.rss_after = vm_rss(stack.resource_pid)
            figures.watched = await _watched(stack.resource_url)
            for r in range(rounds):
                for kind in ("close", "request") if r % 2 == 0 else ("request", "close"):
                    if kind == "close":
                        figures.close_us.append(await close_sample(auth, stack, ws_url))
                    else:
                        figures.request_us.append((await propagation.sample(auth, resource, stack, 0.0))[0])
                figures.wrong = await holders.closes()
                if figures.wrong:
                    break
        finally:
            await holders.stop()
    return figures


def add_rows(results: Results, f: Figures) -> None:
    """The run's rows and targets."""
    opening = (
        f"{f.opened:,} of {f.sockets:,} opened in {f.open_s:.1f} s over {SESSIONS} sessions"
        f" ({f.failed} failed{': ' + f.error if f.error else ''}); tokenlife_watched_connections {f.watched}"
    )
    results.row(
        f"resource process memory per open WebSocket ({f.sockets:,})",
        value=(f.rss_after - f.rss_before) / max(f.opened, 1),
        unit="B",
        note=f"VmRSS {f.rss_before / 2**20:.1f} -> {f.rss_after / 2**20:.1f} MiB; {opening}",
    )
    results.row(
        f"logout -> close received, 1 of {f.sockets + 1:,} open WebSockets",
        f.close_us,
        note="1008 'token revoked' at the client; rounds interleaved with the next row's",
    )
    results.row(
        f"logout -> 401 at the same instance (request path), {f.sockets:,} WebSockets open",
        f.request_us,
        note="bench/propagation.py's sample: GET /v1/whoami until 401",
    )
    complete = not f.wrong and f.opened == f.sockets
    results.target(
        f"WebSockets closed that should stay open ({f.sockets:,} held, {len(f.close_us)} logouts)",
        float(sum(f.wrong.values())),
        "",
        "0",
        complete,
        why="" if complete else f"closes seen: {f.wrong}; {opening}",
    )
    if not f.close_us or not f.request_us:
        results.target("logout -> close received p99", None, "ms", "<= request path p99 + 5 ms", None)
        return
    close_p99 = median_p99(f.close_us)[1] / 1000
    request_p99 = median_p99(f.request_us)[1] / 1000
    met = close_p99 <= request_p99 + MARGIN_MS
    results.target(
        f"logout -> close received p99, {f.sockets:,} WebSockets open",
        close_p99,
        "ms",
        f"<= {request_p99 + MARGIN_MS:.2f} ms (request path p99 {request_p99:.2f} + {MARGIN_MS:g}, same run)",
        met,
        why="" if met else _why(f),
    )


def _why(f: Figures) -> str:
    close, request = median_p99(f.close_us)[0] / 1000, median_p99(f.request_us)[0] / 1000
    return (
        f"this run's medians: close {close:.2f} ms, request path {request:.2f} ms (not profiled: the close "
        "is the apply, the connection's future, then one turn of the instance's loop)"
    )


async def run_async(results: Results, sockets: int = SOCKETS, rounds: int = ROUNDS) -> None:
    """On a stack of its own; skipped rows when the stack cannot start or a sample fails."""
    raise_fd_limit()
    case = f"{sockets:,} real WebSockets on one resource instance"
    try:
        async with running_stack() as stack:
            figures = await measure(stack, sockets, rounds)
    except (StackUnavailable, BenchFailed, httpx.HTTPError, OSError, RuntimeError) as exc:
        results.skipped(case, " ".join(f"{type(exc).__name__}: {exc}".split())[:200])
        return
    add_rows(results, figures)


def run(results: Results) -> None:
    """Add this benchmark's rows and targets."""
    asyncio.run(run_async(results))


def main() -> None:
    """Run this module alone and print its rows."""
    results = Results()
    run(results)
    results.print()


if __name__ == "__main__":
    main()
