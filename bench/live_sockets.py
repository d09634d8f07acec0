"""Real WebSockets held open on one resource instance, closed when their token is revoked.

On a real stack (bench/stack.py: `tokenlife auth serve` with its relay on RabbitMQ, `tokenlife resource
serve` under uvicorn), client processes (bench/live_sockets_client.py) open SOCKETS WebSockets to the sample's
ticking feed (`/v1/ticks`, a tick a minute so that the ticks cost nothing), spread over SESSIONS logins of
their own. Measured:
- the resource process's memory per open socket: VmRSS (/proc/<pid>/status) after opening them against
  before, divided by the count (the socket, its tasks, buffers and its watch); beside it, the same count of
  sockets to the same route without tokenlife (bench/live_sockets_serve.py, a uvicorn of its own, opened
  first), so the difference is what the check and the watch add;
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
import os
import time
from dataclasses import dataclass, field

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bench import propagation
from bench.live_sockets_client import BenchFailed, Holders, raise_fd_limit, vm_rss
from bench.results import Results, median_p99
from bench.stack import Stack, StackUnavailable, free_port, login, ready, running_stack, spawn

SOCKETS = int(os.environ.get("TOKENLIFE_BENCH_SOCKETS", "10000"))
ROUNDS = int(os.environ.get("TOKENLIFE_BENCH_SOCKET_ROUNDS", "50"))
SESSIONS = 50  # logins the held sockets are spread over (each login costs an argon2 hash)
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
    bare: tuple[int, int, int] = (0, 0, 0)  # the route without tokenlife: VmRSS before, after, sockets opened
    watched: float | None = None  # the instance's tokenlife_watched_connections once they are open
    late_ticks: tuple[float, float] = (0.0, 0.0)  # loop-lag ticks > 100 ms late: while opening; in the rounds
    close_us: list[float] = field(default_factory=list)
    request_us: list[float] = field(default_factory=list)
    wrong: dict[str, int] = field(default_factory=dict)  # held sockets the server closed, by code and reason


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


LAG = 'tokenlife_event_loop_lag_seconds_bucket{le="0.1"} '


async def _metrics(resource_url: str) -> tuple[float | None, float]:
    """The instance's watched connections, and how many of its loop-lag ticks ran more than 100 ms late."""
    async with httpx.AsyncClient(timeout=5) as http:
        text = (await http.get(f"{resource_url}/metrics")).text
    found: dict[str, float] = {}
    for line in text.splitlines():
        for name in ("tokenlife_watched_connections ", "tokenlife_event_loop_lag_seconds_count ", LAG):
            if line.startswith(name):
                found[name] = float(line.rsplit(" ", 1)[1])
    late = found.get("tokenlife_event_loop_lag_seconds_count ", 0.0) - found.get(LAG, 0.0)
    return found.get("tokenlife_watched_connections "), late


async def bare_growth(sockets: int, tokens: list[str]) -> tuple[int, int, int]:
    """The same sockets to the route without tokenlife (bench/live_sockets_serve.py) in a uvicorn of its own:
    its VmRSS before and after opening them, and how many opened."""
    port = free_port()
    args = ["bench.live_sockets_serve:app", "--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
    async with contextlib.AsyncExitStack() as stack:
        proc, log = spawn(stack, args, {}, module="uvicorn")
        await ready(f"http://127.0.0.1:{port}", proc, log, "the bare WebSocket route")
        holders = Holders()
        before = vm_rss(proc.pid)
        try:
            opened, _, _ = await holders.start(
                f"ws://127.0.0.1:{port}/v1/ticks?interval={TICK:g}", sockets, tokens
            )
            await asyncio.sleep(SETTLE)
            return before, vm_rss(proc.pid), opened
        finally:
            await holders.stop()


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
        figures.bare = await bare_growth(sockets, tokens)
        figures.rss_before = vm_rss(stack.resource_pid)
        _, late = await _metrics(stack.resource_url)
        began = time.monotonic()
        try:
            figures.opened, figures.failed, figures.error = await holders.start(ws_url, sockets, tokens)
            figures.open_s = time.monotonic() - began
            await asyncio.sleep(SETTLE)
            figures.rss_after = vm_rss(stack.resource_pid)
            figures.watched, opened_late = await _metrics(stack.resource_url)
            for r in range(rounds):
                for kind in ("close", "request") if r % 2 == 0 else ("request", "close"):
                    if kind == "close":
                        figures.close_us.append(await close_sample(auth, stack, ws_url))
                    else:
                        figures.request_us.append((await propagation.sample(auth, resource, stack, 0.0))[0])
                figures.wrong = await holders.closes()
                if figures.wrong:
                    break
            figures.late_ticks = (opened_late - late, (await _metrics(stack.resource_url))[1] - opened_late)
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
    before, after, opened = f.bare
    results.row(
        f"bare FastAPI WebSocket route, memory per open socket ({f.sockets:,})",
        value=(after - before) / max(opened, 1),
        unit="B",
        note=f"the baseline: no token, no watch (bench/live_sockets_serve.py); {opened:,} opened;"
        f" VmRSS {before / 2**20:.1f} -> {after / 2**20:.1f} MiB",
    )
    results.row(
        f"logout -> close received, 1 of {f.sockets + 1:,} open WebSockets",
        f.close_us,
        note="1008 'token revoked' at the client; rounds interleaved with the next row's",
    )
    results.row(
        f"logout -> 401 at the same instance (request path), {f.sockets:,} WebSockets open",
        f.request_us,
        note="bench/propagation.py's sample: GET /v1/whoami until 401; the instance's loop ticks (10/s) over"
        f" 100 ms late: {f.late_ticks[0]:.0f} while the sockets opened, {f.late_ticks[1]:.0f} in the rounds",
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
