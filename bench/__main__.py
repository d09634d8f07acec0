"""Benchmarks: `python -m bench` prints a table and writes bench/results/latest.json.

What a request costs to check, by way of each alternative, in one run on one machine:
- JWT signature verification per algorithm (what every resource service pays per request, without caching);
- the revocation check: tokenlife's in-memory RevocationState against a Redis lookup and a PostgreSQL lookup
  per request (the usual alternatives), on loopback;
- memory per live revocation held by a resource instance.

Services: TOKENLIFE_BENCH_REDIS_URL (default redis://127.0.0.1:6379/15) and TOKENLIFE_BENCH_DATABASE_URL
(default postgresql://postgres@127.0.0.1:5432/postgres). An alternative whose server is unreachable is
reported as skipped, not guessed.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

from bench import checks, jwt_algorithms

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    """Run every benchmark, print the table, write the results."""
    rows: list[dict[str, object]] = []
    rows += jwt_algorithms.run()
    rows += asyncio.run(checks.run())
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


if __name__ == "__main__":
    sys.exit(main())
