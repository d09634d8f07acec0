"""The bound under faults, on real processes: 2 auth and 3 resource instances behind TCP proxies, under load.

Every scenario runs against one shared stack (tests/fault/conftest.py) with logins, refreshes and logouts of
every scope going on, and ends with the same checks (tests/fault/ledger.py): no 200 for a revoked token on a
probe sent later than B = 2 s after its logout's 2xx, no 500, applied positions never going back, and no
revocation missing from any instance once the fault is over. The table of every scenario is printed at the
end of the run, and written as JSON to TOKENLIFE_FAULT_TABLE when it is set (the benchmark run reads it:
bench/bound.py). TOKENLIFE_FAULT_SOAK=1 runs longer faults with more users; a real broker stop runs only with
TOKENLIFE_FAULT_BROKER_RESTART=1 (it stops the machine's RabbitMQ, which other test runs may share).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Awaitable, Callable

import pytest

from tests.fault.conftest import SOAK, Suite
from tests.fault.ledger import SUMMARIES

pytestmark = [pytest.mark.fault, pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

WARM = 6.0 if SOAK else 1.5  # steady load before the fault
HOLD = 12.0 if SOAK else 4.0  # how long a cut or an outage lasts
RECOVERY = 60.0  # an instance must be ready again within this once the fault ends


async def scenario(
    suite: Suite, name: str, fault: Callable[[], Awaitable[None]], *, every_token: bool = False
) -> None:
    """Load, the fault, then the checks; the summary goes to the table."""
    if suite.transport != "queues":
        name = f"{name} [{suite.transport}]"
    since = time.monotonic()
    await asyncio.sleep(WARM)
    await fault()
    await asyncio.sleep(1.0)  # load goes on after the fault too
    missing = await suite.prober.every_revocation_refused(RECOVERY, None if every_token else since)
    summary = suite.ledger.summarize(name, since)
    summary.violations += missing
    summary.lost = len(missing)
    SUMMARIES.append(summary)
    assert summary.violations == []
    assert summary.logouts > 0


async def test_relay_leader_killed(suite: Suite) -> None:
    async def fault() -> None:
        leader = await suite.stack.leader()
        assert leader is not None
        leader.kill()
        await asyncio.sleep(HOLD)
        leader.start()
        await leader.ready()

    await scenario(suite, "relay leader kill -9", fault)


async def test_relay_leader_paused(suite: Suite) -> None:
    async def fault() -> None:
        leader = await suite.stack.leader()
        assert leader is not None
        leader.pause()
        await asyncio.sleep(HOLD)
        leader.resume()

    await scenario(suite, "relay leader SIGSTOP", fault)


async def test_broker_unreachable(suite: Suite) -> None:
    # The broker as every process sees it stopped: connections reset, new ones refused.
    async def fault() -> None:
        for proxy in suite.stack.broker_proxies:
            proxy.refuse()
            proxy.cut()
        await asyncio.sleep(HOLD)
        for proxy in suite.stack.broker_proxies:
            proxy.heal()

    await scenario(suite, "broker unreachable (every link refused)", fault)


async def test_every_broker_link_blackholed(suite: Suite) -> None:
    async def fault() -> None:
        for proxy in suite.stack.broker_proxies:
            proxy.blackhole()
        await asyncio.sleep(HOLD)
        for proxy in suite.stack.broker_proxies:
            proxy.heal()

    await scenario(suite, "every broker link blackholed", fault)


@pytest.mark.skipif(
    os.environ.get("TOKENLIFE_FAULT_BROKER_RESTART") != "1",
    reason="stops the real broker: set TOKENLIFE_FAULT_BROKER_RESTART=1 and the _STOP/_START commands",
)
async def test_broker_stopped(suite: Suite) -> None:
    stop = os.environ.get("TOKENLIFE_FAULT_BROKER_STOP", "rabbitmqctl stop_app")
    start = os.environ.get("TOKENLIFE_FAULT_BROKER_START", "rabbitmqctl start_app")

    async def fault() -> None:
        await asyncio.to_thread(subprocess.run, stop, shell=True, check=True)
        await asyncio.sleep(HOLD)
        await asyncio.to_thread(subprocess.run, start, shell=True, check=True)

    await scenario(suite, "broker stopped", fault)


async def test_one_resource_instance_cut_from_broker_and_auth(suite: Suite) -> None:
    stack = suite.stack
    cut = stack.resource[0]
    proxies = [stack.broker_proxies[len(stack.auth)], *stack.auth_proxies[cut.name]]

    async def fault() -> None:
        for proxy in proxies:
            proxy.refuse()
            proxy.cut()
        await asyncio.sleep(HOLD)
        for proxy in proxies:
            proxy.heal()

    await scenario(suite, f"{cut.name} cut from broker and auth", fault)


@pytest.mark.parametrize("seconds", [1.0, 3.0, 10.0])
async def test_resource_instance_paused(suite: Suite, seconds: float) -> None:
    paused = suite.stack.resource[1]

    async def fault() -> None:
        paused.pause()
        await asyncio.sleep(seconds)
        paused.resume()

    await scenario(suite, f"{paused.name} SIGSTOP {seconds:.0f} s", fault)


async def test_resource_instance_killed_and_restarted(suite: Suite) -> None:
    killed = suite.stack.resource[2]

    async def fault() -> None:
        killed.kill()
        await asyncio.sleep(1.0)
        killed.start()
        await killed.ready(RECOVERY)

    await scenario(suite, f"{killed.name} kill -9 and restart", fault)


async def test_database_restarted(suite: Suite) -> None:
    async def fault() -> None:
        url = suite.stack.database_url
        await asyncio.to_thread(suite.stack.stop_postgres)
        await asyncio.sleep(HOLD / 2)
        await asyncio.to_thread(suite.stack.start_postgres)
        assert suite.stack.database_url == url

    await scenario(suite, "database restart", fault)


async def test_everything_crashed_and_restarted(suite: Suite) -> None:
    stack = suite.stack

    async def fault() -> None:
        for process in [*stack.resource, *stack.auth]:
            process.kill()
        for process in stack.auth:
            process.start()
        for process in stack.auth:
            await process.ready(RECOVERY)
        for process in stack.resource:
            process.start()

    # The final check of the scenario is the point here: every revoked, unexpired token refused everywhere.
    await scenario(suite, "crash everything and restart", fault, every_token=True)
