"""The bound under faults, on real processes: 2 auth and 3 resource instances behind TCP proxies, under load.

Every scenario runs against one shared stack (tests/fault/conftest.py) with logins, refreshes and logouts of
every scope going on, and ends with the same checks (tests/fault/ledger.py): no 200 for a revoked token on a
probe sent later than B = 2 s after its logout's 2xx, no 500, applied positions never going back, and no
revocation missing from any instance once the fault is over. The table of every scenario is printed at the
end of the run, and written as JSON to TOKENLIFE_FAULT_TABLE when it is set (the benchmark run reads it:
bench/bound.py). Two scenarios add a resource instance of their own without a broker, so that only its
auth URLs keep it fresh: one starts it cut from the auth service (its keys cannot be fetched), one pauses the
first auth URL.
TOKENLIFE_FAULT_SOAK=1 runs longer faults with more users; a real broker stop runs only with
TOKENLIFE_FAULT_BROKER_RESTART=1 (it stops the machine's RabbitMQ, which other test runs may share).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Awaitable, Callable

import httpx
import pytest

from tests.conftest import PASSWORD, add_user
from tests.fault.conftest import SOAK, Suite
from tests.fault.ledger import SUMMARIES
from tests.fault.stack import BOUND, Process, Stack

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


async def _signed_in(stack: Stack, email: str, *, new_user: bool = True) -> str:
    """A live access token of a user of the scenario's own (no logout of the load ever revokes it)."""
    if new_user:
        await add_user(stack.database_url, email)
    form = {"grant_type": "password", "username": email, "password": PASSWORD}
    async with httpx.AsyncClient(timeout=5.0) as http:
        response = await http.post(f"{stack.auth[1].base}/oauth/token", data=form)
    response.raise_for_status()
    return str(response.json()["access_token"])


async def _answer(http: httpx.AsyncClient, process: Process, token: str) -> httpx.Response | None:
    try:
        return await http.get(f"{process.base}/v1/whoami", headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError:
        return None  # not listening yet


async def test_valid_token_is_asked_to_retry_not_refused_while_its_key_cannot_be_fetched(
    suite: Suite,
) -> None:
    stack = suite.stack
    token = await _signed_in(stack, "keys@fault.test")
    # The default interval between two fetches of the key set: a failed fetch must not hold the next one off.
    instance = await stack.extra_resource("resource-keys", TOKENLIFE_JWKS_MIN_INTERVAL="10")
    proxies = stack.auth_proxies[instance.name]
    for proxy in proxies:
        proxy.refuse()
    instance.start()
    cut: list[tuple[int, str | None]] = []
    after: list[int] = []
    async with httpx.AsyncClient(timeout=2.0) as http:
        while len(cut) < 10:  # ten answers while the instance cannot reach the auth service at all
            response = await _answer(http, instance, token)
            if response is not None:
                cut.append((response.status_code, response.headers.get("retry-after")))
            await asyncio.sleep(0.1)
        for proxy in proxies:
            proxy.heal()
        await instance.ready(RECOVERY)
        # Once ready, asked again as a client told to retry would, until it is accepted.
        for _ in range(100):
            response = await _answer(http, instance, token)
            assert response is not None
            after.append(response.status_code)
            if response.status_code == 200:
                break
            await asyncio.sleep(0.1)
    instance.kill()
    # Back in touch: the key set is fetched on the next request, not after the ten seconds' interval.
    assert 401 not in after, f"answers once ready again: {after}"
    assert after[-1] == 200
    # Cut off, the instance could judge neither the key nor the state: every answer said retry, none invalid.
    assert {status for status, _ in cut} == {503}
    assert all(retry_after is not None and int(retry_after) >= 1 for _, retry_after in cut)


async def test_hung_first_auth_url_is_left_for_the_next_and_the_instance_stays_fresh(suite: Suite) -> None:
    stack = suite.stack
    token = await _signed_in(stack, "hung@fault.test")
    watcher = await stack.extra_resource("resource-longpoll")
    watcher.start()
    await watcher.ready(RECOVERY)
    hung = stack.auth[0]  # the first of every resource instance's auth URLs
    statuses: list[int] = []
    revoked: list[tuple[float, int]] = []  # (sent, status) of a token signed out during the hang
    logout_at = 0.0

    async def fault() -> None:
        nonlocal logout_at
        async with httpx.AsyncClient(timeout=2.0) as http:
            for _ in range(20):  # accepted through the first URL before the fault
                response = await _answer(http, watcher, token)
                if response is not None and response.status_code == 200:
                    break
                await asyncio.sleep(0.1)
            hung.pause()
            try:
                paused = time.monotonic()
                end = paused + HOLD
                other = await _signed_in(stack, "hung@fault.test", new_user=False)
                while time.monotonic() < end:
                    if not logout_at and time.monotonic() > paused + HOLD * 3 / 4:
                        # A sign-out on the healthy instance late in the hang, once any fail-over is long
                        # over (a new event would end a long-poll's hold early, hiding a stale spell): every
                        # instance must refuse it in time (the ledger's checks), the watcher too.
                        bearer = {"Authorization": f"Bearer {other}"}
                        ended = await http.post(f"{stack.auth[1].base}/v1/auth/logout", headers=bearer)
                        assert ended.status_code == 200
                        logout_at = time.monotonic()
                        suite.ledger.revoke([other], logout_at)
                        end = max(end, logout_at + BOUND + 0.5)
                    sent = time.monotonic()
                    answers = await asyncio.gather(
                        _answer(http, watcher, token), _answer(http, watcher, other)
                    )
                    live, gone = (-1 if a is None else a.status_code for a in answers)
                    statuses.append(live)
                    if logout_at:
                        revoked.append((sent, gone))
                    await asyncio.sleep(0.1)
            finally:
                hung.resume()

    try:
        await scenario(suite, f"{hung.name} (every first auth URL) SIGSTOP", fault)
    finally:
        watcher.kill()
    # The second auth instance was healthy all along: the instance never went stale, so never refused a live
    # token, and it learnt of the sign-out through that instance, within the bound.
    assert statuses
    assert set(statuses) == {200}, f"answers while the first auth URL hung: {sorted(set(statuses))}"
    assert revoked[-1][1] == 401
    assert [status for sent, status in revoked if sent > logout_at + BOUND and status != 401] == []
