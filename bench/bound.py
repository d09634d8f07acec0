"""The 2-second bound under faults: the fault suite run for real, its scenario table as rows and targets.

The bound: a revoked token is refused by every resource instance within B (2 s) of its logout's 2xx, under
every fault, and no committed revocation is lost. tests/fault/ checks it on real processes (2 auth and 3
resource instances behind TCP proxies, a private embedded PostgreSQL, RabbitMQ) under a steady load, through
each scenario: relay leader kill -9 and SIGSTOP, the broker unreachable and blackholed, a resource instance
cut, paused 1/3/10 s, killed and restarted, a database restart, everything crashed and restarted; the
broker, relay and instance scenarios again with the instances on the stream transport ("[stream]"); and the
relay leader kill and the broker cut with WebSockets open (", with WebSockets open").

`run()` runs `python -m pytest tests/fault -q` in a child process with TOKENLIFE_FAULT_TABLE naming a file
in a fresh temporary directory, so every figure comes from this run; the suite writes its table there at the
end (tests/fault/conftest.py). Per scenario, one row: the worst delay (the longest a revoked token still got
a 200 after its logout's 2xx), logouts, probes and violations. The targets: the worst delay over every
scenario within B, no revoked token accepted past B, no committed revocation missing from an instance once
the fault is over; each is met only if every scenario ran to its end. `python -m bench.bound` runs this part
alone and prints it (`--write PATH` also saves it as a results file that `python -m bench.report PATH` reads).

The broker is TOKENLIFE_BENCH_AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/); unreachable, the part
is reported as skipped.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.results import Results
from bench.stack import DEFAULT_AMQP_URL, StackUnavailable, _check_broker

ROOT = Path(__file__).resolve().parent.parent
SUITE = "tests/fault"
TIMEOUT = 30 * 60.0  # about 2 minutes, 3.5 more for the stream module, 1 for the sockets; a soak much longer
TAIL = 40  # lines of the suite's output printed when it did not pass
CASE = "bound: {}"
WHY_LINES = 6

DELAY = "worst delay under faults (max over scenarios)"
LATE = "revoked tokens accepted past the bound"
LOST = "committed revocations missing from an instance after the fault"


class SuiteFailed(Exception):
    """The fault suite ended without writing its table."""


def run_suite(amqp_url: str) -> dict[str, Any]:
    """Run the fault suite once in a child process; its table, as the suite wrote it in this run."""
    with tempfile.TemporaryDirectory(prefix="tokenlife-bound-") as tmp:
        table, output = Path(tmp) / "table.json", Path(tmp) / "pytest.out"
        env = os.environ | {"TOKENLIFE_FAULT_TABLE": str(table), "TOKENLIFE_TEST_AMQP_URL": amqp_url}
        command = [sys.executable, "-m", "pytest", SUITE, "-q", "-p", "no:cacheprovider"]
        with output.open("wb") as out:
            # Its own session, so that a timeout ends the suite's processes with it.
            child = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=out, stderr=out, start_new_session=True
            )
            try:
                status = child.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
                raise SuiteFailed(f"the fault suite did not end within {TIMEOUT:.0f} s") from None
        lines = output.read_text(errors="replace").splitlines()
        print("\n".join(lines[-TAIL:] if status else lines[-1:]))  # noqa: T201 - the suite's own summary
        if not table.exists():
            last = " ".join(lines[-3:])
            raise SuiteFailed(f"the fault suite (exit status {status}) wrote no table: {last}")
        return dict(json.loads(table.read_text()))


def add(results: Results, run: dict[str, Any]) -> None:
    """The suite's table as rows (one per scenario) and the bound's targets."""
    bound = float(run["bound_s"])
    scenarios: list[dict[str, Any]] = run["scenarios"]
    for s in scenarios:
        entry = results.row(
            CASE.format(s["scenario"]),
            value=round(s["worst_delay"], 3),
            unit="s",
            note=f"worst delay; {s['logouts']} logouts, {s['probes']} probes, "
            f"{len(s['violations'])} violations",
        )
        entry |= {
            "scenario": s["scenario"],
            "logouts": s["logouts"],
            "probes": s["probes"],
            "violations": len(s["violations"]),
            "late": s["late"],
            "lost": s["lost"],
        }
    unfinished = [t for t in run["tests"] if t["outcome"] == "failed" and t["scenario"] is None]
    for t in unfinished:
        results.skipped(CASE.format(t["test"]), f"ended before its summary ({t['when']}): {t['why']}")
    for t in run["tests"]:
        if t["outcome"] == "skipped":
            results.skipped(CASE.format(t["test"]), t["why"])
    if run["soak"]:
        results.notes["bound"] = "soak run: longer faults, more users"
    if not scenarios:
        _not_measured(results, unfinished[0]["why"] if unfinished else "no scenario ran")
        return
    worst = max(s["worst_delay"] for s in scenarios)
    late = sum(s["late"] for s in scenarios)
    lost = sum(s["lost"] for s in scenarios)
    complete = not unfinished
    stopped = [f"{t['test']} ended before its summary: {t['why']}" for t in unfinished]
    violations = [f"{s['scenario']}: {v}" for s in scenarios for v in s["violations"]]
    why = "; ".join((stopped + violations)[:WHY_LINES])
    _target(results, DELAY, round(worst, 3), "s", f"<= {bound:g} s", complete and worst <= bound, why)
    _target(results, LATE, late, "", "0", complete and late == 0, why)
    _target(results, LOST, lost, "", "0", complete and lost == 0, why)


def _not_measured(results: Results, reason: str) -> None:
    for name, unit, wanted in ((DELAY, "s", "<= B"), (LATE, "", "0"), (LOST, "", "0")):
        results.target(name, None, unit, wanted, None, reason)


def _target(results: Results, name: str, value: float, unit: str, target: str, met: bool, why: str) -> None:
    results.target(name, value, unit, target, met, "" if met else why)


def run(results: Results) -> None:
    """Check the broker, run the fault suite, add its rows and targets; a part that cannot run is skipped."""
    amqp_url = os.environ.get("TOKENLIFE_BENCH_AMQP_URL", DEFAULT_AMQP_URL)
    try:
        asyncio.run(_check_broker(amqp_url))
        table = run_suite(amqp_url)
    except (StackUnavailable, SuiteFailed) as exc:
        reason = " ".join(str(exc).split())[:200]
        results.skipped(CASE.format("the fault suite"), reason)
        _not_measured(results, reason)
        return
    add(results, table)


def main(argv: list[str]) -> int:
    results = Results()
    run(results)
    results.print()
    if argv[:1] == ["--write"] and len(argv) == 2:
        results.write(Path(argv[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
