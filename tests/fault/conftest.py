"""The fault suite's shared stack (one per module run) and its summary table at the end of the session.

With TOKENLIFE_FAULT_TABLE set to a path, the table is also written there as JSON at the end of the session
(every scenario's summary, the tests that failed and why, the exit status): `python -m bench.bound` reads it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from amqpkit.streams import stream_name
from auth_service.db.migrate import upgrade
from tests.conftest import EXCHANGES, RUN_ID, _delete_queue, add_user, delete_broker_objects
from tests.fault.ledger import NOTES, SUMMARIES, Ledger, Load, Prober, table
from tests.fault.stack import BOUND, Stack

SOAK = os.environ.get("TOKENLIFE_FAULT_SOAK") == "1"
TABLE = os.environ.get("TOKENLIFE_FAULT_TABLE", "")

# Every test of the suite that ran or was skipped: its outcome, the scenario it summarized (None: it ended
# before its summary), and the first line of why when it did not pass.
TESTS: list[dict[str, str | None]] = []


@dataclass
class Suite:
    stack: Stack
    ledger: Ledger
    prober: Prober

    @property
    def transport(self) -> str:
        """What carries revocations to the resource instances: queues or stream."""
        return self.stack.transport


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def suite(request: pytest.FixtureRequest, amqp_url: str) -> AsyncIterator[Suite]:
    """The stack under a steady load and probes, for every scenario of the module; on the transport the
    module names in TRANSPORT (queues when it names none)."""
    transport = getattr(request.module, "TRANSPORT", "queues")
    workdir = Path(tempfile.mkdtemp(prefix="tokenlife-fault-"))
    exchange = f"tokenlife.fault.{RUN_ID}.{uuid.uuid4().hex[:12]}"
    EXCHANGES.append(exchange)  # checked gone at the end of the run (tests/conftest.py)
    stack = Stack(workdir, amqp_url, exchange, transport=transport)
    if transport == "stream":
        stack.stream_port = request.getfixturevalue("stream_port")
    tasks: list[asyncio.Task[None]] = []
    load: Load | None = None
    prober: Prober | None = None
    try:
        stack.start_postgres()
        await asyncio.to_thread(upgrade, stack.database_url)
        users = [f"user{i}@fault.test" for i in range(8 if SOAK else 3)]
        for email in users:
            await add_user(stack.database_url, email)
        await stack.start()
        ledger = Ledger()
        load = Load(stack, ledger, users)
        prober = Prober(stack, ledger)
        tasks = [asyncio.create_task(load.run(email)) for email in users]
        tasks += [asyncio.create_task(prober.run_instance(p)) for p in stack.resource]
        yield Suite(stack, ledger, prober)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for closable in (load, prober):
            if closable is not None:
                await closable.aclose()
        await stack.stop()
        if transport == "stream":
            await _delete_queue(amqp_url, stream_name(exchange))  # a stream keeps its disk until deleted
        await delete_broker_objects(amqp_url, exchange)
        shutil.rmtree(workdir, ignore_errors=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The table of every scenario run: logouts, probes, worst delay, violations."""
    if not SUMMARIES:
        return
    terminalreporter.section("fault suite (bound B = 2.0 s)")
    for line in [*table(), *NOTES]:
        terminalreporter.write_line(line)


def _why(report: pytest.TestReport) -> str:
    if isinstance(report.longrepr, tuple):  # a skip: (path, line, "Skipped: reason")
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    crash = getattr(report.longrepr, "reprcrash", None)
    lines = str(getattr(crash, "message", report.longrepr)).strip().splitlines()
    return lines[0] if lines else ""


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Record each test's outcome; a scenario that failed before its summary leaves only this."""
    if report.when == "call" or not report.passed:
        ran = [t for t in TESTS if t["scenario"] is not None]
        scenario = SUMMARIES[-1].scenario if report.when == "call" and len(SUMMARIES) > len(ran) else None
        TESTS.append(
            {
                "test": report.nodeid,
                "when": report.when,
                "outcome": report.outcome,
                "scenario": scenario,
                "why": "" if report.passed else _why(report),
            }
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The table as JSON at TOKENLIFE_FAULT_TABLE, when it is set."""
    if not TABLE:
        return
    payload = {
        "bound_s": BOUND,
        "soak": SOAK,
        "exit_status": int(exitstatus),
        "scenarios": [dataclasses.asdict(s) for s in SUMMARIES],
        "tests": TESTS,
    }
    Path(TABLE).write_text(json.dumps(payload, indent=1) + "\n")
