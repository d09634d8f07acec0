"""N resource instances at 100 revocations/s, on the exchange's stream against per-instance queues.

A private RabbitMQ node of this run (tests/rabbit_nodes.py: its own name, ports and data), so that the
broker's CPU and memory are this benchmark's alone on a machine whose shared broker serves other runs. Two
stacks on it, one per transport: a database, `tokenlife auth serve` with its relay (TOKENLIFE_TRANSPORT
queues or stream, an exchange each). The instances are bench/scale_worker.py processes (2 for N >= 100),
each running N / processes instances of the project's real feed and state, each with its own connection.
For every N, a round on each transport, the order alternating from one N to the next:

- broker memory per instance: erlang:memory(total), asked of the node, with the N instances connected and
  caught up, less the same before they started, over N;
- for LOAD seconds, 100 revocations/s appended to the log (the project's own append: lock, projections,
  NOTIFY) from this process, each stamped when its commit returned; the round ends when every instance has
  applied every one (or DRAIN passes);
- broker CPU per 1,000 deliveries: the node's beam.smp process (its pid file, checked against the node's
  own os:getpid() and /proc) user + system CPU over the round, over the messages the instances counted
  (events applied and heartbeats: deliveries, not publishes);
- commit -> applied at the last of the N instances, p50 and p99 (each worker reports when the last of its
  instances applied a position; the last over the workers);
- restart storm, with revocations still flowing: every instance stops and a new one starts at once; the
  time until all are ready, and the snapshots the auth service served meanwhile (its
  tokenlife_snapshots_served_total).

An N is run on a transport only when the instances' CPU it needs (N x the messages an instance received a
second x the CPU an instance spent per message, both measured in that transport's last round) fits in the
machine's cores; otherwise a skipped row gives the estimate, and no larger N runs on that transport. A round
whose instances are not all ready in time (at the start or in the storm) stops its transport likewise.
`python -m bench.scale` runs it alone (`python -m bench.scale 10 100` at those sizes only).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
import uuid
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx

from bench import scale_rows
from bench.fanout_serve import REPORT_ENV
from bench.fanout_wire import Reports
from bench.results import Results
from bench.scale_load import Load
from bench.scale_round import Round, Workers
from bench.stack import DEFAULT_DATABASE_URL, SERVICE_CLIENT, StackUnavailable, _database, _serve, ready
from tests import rabbit_nodes

SIZES = (10, 100, 300)
BIG = 1000


async def _auth(
    stack: AsyncExitStack, server_url: str, amqp_url: str, transport: str
) -> tuple[str, str, str]:
    """A database and an auth service with its relay on `transport`: its URL, the database's, the exchange."""
    run_id = uuid.uuid4().hex[:12]
    database_url = await _database(stack, server_url, f"tokenlife_scale_{run_id}", None)
    exchange = f"tokenlife.scale.{transport}.{run_id}"
    env = {
        "TOKENLIFE_ENV": "dev",
        "TOKENLIFE_DATABASE_URL": database_url,
        "TOKENLIFE_AMQP_URL": amqp_url,
        "TOKENLIFE_EXCHANGE": exchange,
        "TOKENLIFE_TRANSPORT": transport,
        "TOKENLIFE_SERVICE_CLIENTS": f'{{"{SERVICE_CLIENT[0]}": "{SERVICE_CLIENT[1]}"}}',
        "TOKENLIFE_RELAY_ENABLED": "true",
    }
    url, proc, log = _serve(stack, "auth", env)
    await ready(url, proc, log, f"auth service ({transport})")
    return url, database_url, exchange


async def measure(results: Results, sizes: tuple[int, ...], big: int | None) -> None:
    """Start the node and both stacks, run every round, record the rows and targets."""
    reason = rabbit_nodes.available()
    if reason:
        raise StackUnavailable(reason)
    home = Path(tempfile.mkdtemp(prefix="tokenlife-scale-"))
    reports = Reports()
    report_to = await reports.open()
    nodes: list[rabbit_nodes.RabbitNode] = []
    try:
        await asyncio.to_thread(rabbit_nodes.start_cluster, home, f"tl-scale-{os.getpid()}", 1, nodes)
        node = nodes[0]
        server_url = os.environ.get("TOKENLIFE_BENCH_DATABASE_URL", DEFAULT_DATABASE_URL)
        async with AsyncExitStack() as stack:
            stacks = {t: await _auth(stack, server_url, node.amqp_url, t) for t in ("queues", "stream")}
            rounds: list[Round] = []
            stopped: dict[str, str] = {}  # transport -> why its rounds stopped
            for i, n in enumerate((*sizes, *([big] if big else []))):
                order = ("queues", "stream") if i % 2 == 0 else ("stream", "queues")
                for transport in order:
                    why = stopped.get(transport) or scale_rows.beyond_machine(rounds, transport, n)
                    if why:
                        stopped[transport] = why
                        results.skipped(f"scale N={n} {transport}", why)
                        continue
                    auth_url, database_url, exchange = stacks[transport]
                    workers = Workers(
                        n,
                        {
                            "auth_url": auth_url,
                            "amqp_url": node.amqp_url,
                            "exchange": exchange,
                            "transport": transport,
                            "stream_port": node.stream_port,
                            "client_id": SERVICE_CLIENT[0],
                            "client_secret": SERVICE_CLIENT[1],
                        },
                        {REPORT_ENV: report_to},
                    )
                    load = Load(database_url)
                    one = Round(transport, n, node, workers, load, reports, auth_url)
                    try:
                        await one.run()
                    finally:
                        await workers.quit()
                        await load.aclose()
                    rounds.append(one)
                    print(scale_rows.progress(one), file=sys.stderr)  # noqa: T201
                    if one.failed:
                        stopped[transport] = f"stopped after N = {n}: {one.failed}"
                if len(stopped) == 2:
                    break
            scale_rows.record(results, rounds)
    finally:
        reports.close()
        await asyncio.to_thread(rabbit_nodes.stop_all, nodes)
        rabbit_nodes.remove(home)


async def run(results: Results, sizes: tuple[int, ...] = SIZES, big: int | None = BIG) -> None:
    """The whole benchmark; skipped rows and unmeasured targets when it could not run."""
    try:
        await measure(results, sizes, big)
    except (StackUnavailable, RuntimeError, TimeoutError, OSError, httpx.HTTPError) as exc:
        scale_rows.skipped(results, " ".join(f"{type(exc).__name__}: {exc}".split())[:300])


async def _until_terminated(work: Coroutine[Any, Any, None]) -> None:
    """Run `work`; SIGTERM (as `timeout` sends) cancels it, so the node, the services and the databases
    are still stopped and dropped."""
    task = asyncio.ensure_future(work)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    await task


def main(argv: list[str]) -> int:
    """`python -m bench.scale [--write PATH] [N ...]`: rounds at these sizes (default 10 100 300 1000, as
    the machine holds them); with --write, the run is also saved as a results file (bench.report reads it)."""
    results = Results()
    write = Path(argv[1]) if argv[:1] == ["--write"] and len(argv) >= 2 else None
    sizes = tuple(int(a) for a in argv[2 if write else 0 :]) or SIZES
    custom = bool(argv[2 if write else 0 :])
    asyncio.run(_until_terminated(run(results, sizes, None if custom else BIG)))
    results.print()
    if write is not None:
        results.write(write)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
