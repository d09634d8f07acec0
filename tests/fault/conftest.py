"""The fault suite's shared stack (one per module run) and its summary table at the end of the session."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from auth_service.migrate import upgrade
from tests.conftest import add_user
from tests.fault.ledger import SUMMARIES, Ledger, Load, Prober, table
from tests.fault.stack import Stack

SOAK = os.environ.get("TOKENLIFE_FAULT_SOAK") == "1"


@dataclass
class Suite:
    stack: Stack
    ledger: Ledger
    prober: Prober


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def suite(amqp_url: str) -> AsyncIterator[Suite]:
    """The stack under a steady load and probes, for every scenario of the module."""
    workdir = Path(tempfile.mkdtemp(prefix="tokenlife-fault-"))
    stack = Stack(workdir, amqp_url, f"tokenlife.fault.{uuid.uuid4().hex[:12]}")
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
        shutil.rmtree(workdir, ignore_errors=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The table of every scenario run: logouts, probes, worst delay, violations."""
    if not SUMMARIES:
        return
    terminalreporter.section("fault suite (bound B = 2.0 s)")
    for line in table():
        terminalreporter.write_line(line)
