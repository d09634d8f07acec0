"""Benchmarks: `python -m bench` prints a table and writes bench/results/latest.json.

What a request costs to check, by way of each alternative, in one run on one machine:
- JWT signature verification per algorithm (what every resource service pays per request, without caching);
- the revocation check: tokenlife's in-memory RevocationState against a Redis lookup and a PostgreSQL lookup
  per request (the usual alternatives), on loopback;
- memory per live revocation held by a resource instance;
- on a real stack (bench/stack.py: a fresh database, `tokenlife auth serve`, `tokenlife resource serve`):
  a protected request at the resource service against an introspection call at the auth service, and the
  time from a logout's 200 until the resource service refuses the token, by broker push and by HTTP polling.

Services: TOKENLIFE_BENCH_REDIS_URL (default redis://127.0.0.1:6379/15), TOKENLIFE_BENCH_DATABASE_URL
(default postgresql://postgres@127.0.0.1:5432/postgres) and TOKENLIFE_BENCH_AMQP_URL (default
amqp://guest:guest@127.0.0.1:5672/). An alternative whose server is unreachable is reported as skipped, not
guessed.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

from bench import checks, introspection, jwt_algorithms, propagation
from bench.stack import StackUnavailable, running_stack

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    """Run every benchmark, print the table, write the results."""
    rows: list[dict[str, object]] = []
    rows += jwt_algorithms.run()
    rows += asyncio.run(checks.run())
    rows += asyncio.run(_on_stack())
    width = max(len(str(r["case"])) for r in rows)
    print(f"{'case':<{width}}  {'median':>12}  {'p99':>12}  note")  # noqa: T201
    for r in rows:
        median = f"{r['median_us']:.2f} us" if r.get("median_us") is not None else "-"
        p99 = f"{r['p99_us']:.2f} us" if r.get("p99_us") is not None else "-"
        print(f"{r['case']!s:<{width}}  {median:>12}  {p99:>12}  {r.get('note', '')}")  # noqa: T201
    RESULTS.mkdir(exist_ok=True)
    payload = {
        "taken_at": datetime.now(UTC).isoformat(),
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "results": rows,
    }
    (RESULTS / "latest.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwritten to {RESULTS / 'latest.json'}")  # noqa: T201
    return 0


async def _on_stack() -> list[dict[str, object]]:
    """The benchmarks that need a running stack, sharing one; skipped rows when it cannot start."""
    try:
        async with running_stack(poll_only=True) as stack:
            return await introspection.run(stack) + await propagation.run(stack)
    except StackUnavailable as exc:
        reason = " ".join(str(exc).split())[:200]
        return introspection.skipped_rows(reason) + propagation.skipped_rows(reason)


if __name__ == "__main__":
    sys.exit(main())
