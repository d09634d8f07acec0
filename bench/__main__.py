"""Benchmarks: `python -m bench` prints the figures and targets, writes bench/results/latest.json and draws
docs/benchmark-latency.png.

Every figure stands beside its baseline from the same run, with rounds interleaved so that ratios hold on a
noisy machine. Each module adds rows, targets and latency samples to one Results (bench/results.py):
- hotpath: the warm and cold check against PyJWT's decode, a Redis EXISTS and a PostgreSQL lookup;
- memory: bytes per live revocation at 1M entries, process growth after a 100k snapshot, its size and time;
- live_connections: the watch index of open WebSockets and event streams: bytes per watched connection, the
  cost of applying one event with 10,000 watched against none;
- live_sockets: 10,000 real WebSockets on one resource instance (held by client processes): the process's
  memory per open socket, and logout -> close received for one user's socket against logout -> 401 on the
  request path, interleaved, with a count of the other sockets closed (none may be);
- tracing: a protected request of the sample app with tracing off against OpenTelemetry not installed, and
  with tracing on;
- throughput: requests per second through uvicorn, the tokenlife dependency against a header-only one;
- jwt_algorithms: sign and verify per algorithm (the basis of the ES256 default);
- on a real stack (bench/stack.py): introspection per request and propagation from logout to 401 (broker,
  broker unreachable, and long-poll alone with no broker: longpoll.py);
- fanout: logout -> refused on all 3 resource instances against aio-pika publish -> 3 consumers, on a stack
  of its own;
- ssf_delivery: Shared Signals push, a revocation's commit -> its SET at a push receiver (1 receiver at
  100/s), and 100 receivers with one dead against none dead;
- coldstart: a resource instance's time to ready with 100k live revocations among 1M events, against empty;
- scale: N resource instances (10, 100, 300, 1,000 as the machine holds them) at 100 revocations/s on the
  exchange's stream against per-instance queues, on a private RabbitMQ node: broker CPU per 1,000
  deliveries, broker memory per instance, commit -> applied at the last of N, and a restart storm (time to
  all ready, snapshots the auth service served);
- log_speed: logouts/s and p99 through the group committer against a bare-INSERT route, auth CPU per
  logout, and the set-based rebuild over 1M events against event by event;
- grant_speed: refreshes/s and p99, logins/s, a mixed load and two auth processes through the log writer,
  against the same bare-INSERT route, the append lock's hold per event, and logouts on stale statistics;
- bound: the 2-second bound under faults, the fault suite (tests/fault/) run in a child process: per
  scenario the worst delay from a logout's 2xx until every instance refuses the token, logouts, probes and
  violations (about 6 minutes, the stream transport's scenarios and open WebSockets included).

Services: TOKENLIFE_BENCH_REDIS_URL (default redis://127.0.0.1:6379/15), TOKENLIFE_BENCH_DATABASE_URL
(default postgresql://postgres@127.0.0.1:5432/postgres) and TOKENLIFE_BENCH_AMQP_URL (default
amqp://guest:guest@127.0.0.1:5672/). An alternative whose server is unreachable is reported as skipped.
"""

from __future__ import annotations

import asyncio
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import (
    bound,
    coldstart,
    fanout,
    grant_profiles,
    grant_speed,
    hotpath,
    introspection,
    jwt_algorithms,
    live_connections,
    live_sockets,
    log_speed,
    longpoll,
    memory,
    picture,
    propagation,
    scale,
    ssf_delivery,
    throughput,
    tracing,
)
from bench.results import Results
from bench.stack import StackUnavailable, running_stack

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "latest.json"
PICTURE = ROOT / "docs" / "benchmark-latency.png"


def main() -> int:
    """Run every benchmark, print the tables, write the results and the picture."""
    results = Results()
    steps: list[tuple[str, Callable[[], object]]] = [
        ("hotpath", lambda: asyncio.run(hotpath.run(results))),
        ("memory", lambda: memory.run(results)),
        ("live_connections", lambda: live_connections.run(results)),
        ("live_sockets", lambda: live_sockets.run(results)),
        ("tracing", lambda: tracing.run(results)),
        ("throughput", lambda: asyncio.run(throughput.run(results))),
        ("jwt_algorithms", lambda: results.rows.extend(_legacy(row) for row in jwt_algorithms.run())),
        ("on a stack", lambda: asyncio.run(_on_stack(results))),
        ("fanout", lambda: asyncio.run(fanout.run(results))),
        ("ssf_delivery", lambda: asyncio.run(ssf_delivery.run(results))),
        ("coldstart", lambda: asyncio.run(coldstart.run(results))),
        ("scale", lambda: asyncio.run(scale.run(results))),
        ("log_speed", lambda: _log_speed(results)),
        ("grant_speed", lambda: _grant_speed(results)),
        ("bound", lambda: bound.run(results)),
    ]
    for name, step in steps:
        try:
            step()
        except Exception as exc:  # one benchmark's failure is reported in the results, the others still run
            traceback.print_exc()
            results.skipped(f"bench.{name}", "failed: " + " ".join(str(exc).split())[:200])
    results.print()
    results.write(RESULTS)
    drawn = picture.draw(results, PICTURE)
    print(f"\nwritten to {RESULTS}" + (f" and {PICTURE}" if drawn else ""))  # noqa: T201
    return 0


# Where the write path's time goes, profiled apart from the run (docs/architecture.md, the write path).
SATURATION_PROFILE = (
    "py-spy at saturation, 3 s of each closed-loop round: the token's verification about 9% of the auth "
    "process's samples (RS256, in C), uvicorn's response send 8%, the log writer 17% (its batch's round trip "
    "and arguments 9%, its hand-off to the relay 7%), the relay 13% all told (25% when it published with "
    "aiormq's one-message call), the access log 3%, the event loop itself 5%; the rest is uvicorn, Starlette "
    "and FastAPI around the route (profiled with RS256 tokens; an ES256 token, the default since 2026-12-05, "
    "takes about 35 us more to verify: bench/jwt_algorithms.py)"
)
OPEN_LOOP_PROFILE = (
    "py-spy at 500 logouts/s offered: the event loop itself 29% of the auth process's samples (waiting and "
    "waking at a rate that gives small batches), the log writer 13% (asyncpg's round trips 11%), the relay "
    "15% (its pump 7%, the hand-off 2%), the token's verification 7%, the access log 2%"
)
REBUILD_PROFILE = (
    "EXPLAIN ANALYZE (docs/architecture.md): the sessions query on the second connection is the critical "
    "path (two scans of the log 0.45 + 0.75 s, the ends 0.9 s, of about 3 s); the revocations, their COPY "
    "and their indexes run beside it; the sessions' indexes 0.4 s after it"
)


def _log_speed(results: Results) -> None:
    """The write path against a bare-INSERT route, and the rebuild (bench/log_speed.py)."""
    try:
        figures = log_speed.run()
    except Exception as exc:  # a failed sub-benchmark is reported, never guessed
        reason = " ".join(str(exc).split())[:200]
        results.skipped("logouts/s (group commit) against a bare-INSERT route", reason)
        return
    for row in figures["rows"]:
        relay = log_speed.relay_note(row)
        results.row(
            f"write path: {row['case']}",
            value=round(row["rate"], 1),
            unit="1/s",
            note=(
                f"p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms, {row['requests']} requests"
                f" from {row.get('generator', 'the asyncio client')}" + (f"; {relay}" if relay else "")
            ),
        )
    for name, value in figures["baselines"].items():
        results.row(f"write path baseline: {name}", value=round(value, 3), unit="", note="same run")
    for t in figures["targets"]:
        why = "" if t["met"] else _write_path_why(t["name"], figures)
        results.target(t["name"], t["value"], t["unit"], t["target"], t["met"], why)


def _grant_speed(results: Results) -> None:
    """Refreshes, logins, a mixed load, two processes, stale statistics (bench/grant_speed.py)."""
    try:
        figures = grant_speed.run()
    except Exception as exc:  # a failed sub-benchmark is reported, never guessed
        reason = " ".join(str(exc).split())[:200]
        results.skipped("refreshes/s (through the log writer) against a bare-INSERT route", reason)
        return
    for row in figures["rows"]:
        note = ", ".join(
            f"{k} {row[k]:.2f}" for k in ("p50_ms", "p99_ms", "lock_held_us_per_event") if k in row
        )
        results.row(f"grants: {row['case']}", value=round(row["rate"], 1), unit="1/s", note=note)
    for name, value in figures["baselines"].items():
        results.row(f"grants baseline: {name}", value=round(value, 3), unit="", note="same run")
    for t in figures["targets"]:
        why = "" if t["met"] else grant_profiles.why(t["name"], figures["baselines"])
        results.target(t["name"], t["value"], t["unit"], t["target"], t["met"], why)


def _write_path_why(name: str, figures: dict[str, Any]) -> str:
    """Where the time goes, for a missed write-path target: this run's CPU a request, and the profile."""
    if "rebuild" in name:
        return REBUILD_PROFILE
    if "p99" in name:
        return OPEN_LOOP_PROFILE
    logout = next(t["value"] for t in figures["targets"] if t["name"].startswith("auth CPU per logout"))
    bare = figures["baselines"]["bare_cpu_ms_per_request"]
    return (
        f"this run: {logout:.3f} ms of the auth process's CPU a logout (relay included) against"
        f" {bare:.3f} ms a bare-route request ({logout / bare:.2f}x); {SATURATION_PROFILE}"
    )


def _legacy(row: dict[str, object]) -> dict[str, object]:
    """A row of the older modules (median_us, p99_us) in the Results shape."""
    return {
        "case": row["case"],
        "unit": "us",
        "median": row.get("median_us"),
        "p99": row.get("p99_us"),
        "note": row.get("note", ""),
    }


async def _on_stack(results: Results) -> None:
    """The benchmarks that need a running stack, sharing one; skipped rows when it cannot start."""
    try:
        async with running_stack(poll_only=True) as stack:
            rows = await introspection.run(stack) + await propagation.run(stack) + await longpoll.run(stack)
    except StackUnavailable as exc:
        reason = " ".join(str(exc).split())[:200]
        rows = (
            introspection.skipped_rows(reason)
            + propagation.skipped_rows(reason)
            + longpoll.skipped_rows(reason)
        )
    for row in rows:
        results.rows.append(_legacy(row))
    samples = getattr(introspection, "last_samples", {}) | getattr(propagation, "last_samples", {})
    for name, values in samples.items():
        results.samples(name, values)


if __name__ == "__main__":
    sys.exit(main())
