"""Logout -> refused on all 3 resource instances, beside the broker's publish -> delivered to 3 consumers.

On one stack (bench/stack.py: the auth service with its relay, RabbitMQ), three resource service processes
follow the log through the broker; each reports the moment it applies an event (bench/fanout_serve.py: the
real service with one hook more), from which moment it refuses the revoked token. Every round takes one
sample of each, in an order that rotates from round to round:

- tokenlife: log in, check /v1/whoami answers 200 on all three, POST /v1/auth/logout, then
  - in two rounds of three (resource side), wait for the three instances' reports that they applied the
    logout's event, then check each answers 401: the sample ends at the last apply;
  - in the third (probed), ask all three at once, each as fast as one persistent connection allows, until
    each answers 401: the sample ends when the last 401 is read;
  both measured from logout's 200 at the client (the targets) and from just before logout was sent;
- the broker alone (bench/raw_fanout.py), consumers in three processes as the instances are, and all three
  in this process.

The targets: tokenlife's p50 and p99 from logout's 200 (resource side) each within 1.5x of the broker's own
(three consumer processes). A LISTEN on the log's channel sees each commit, which splits the time into
commit -> logout's 200 and commit -> the last apply. `python -m bench.fanout` runs it alone.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from functools import partial

import asyncpg
import httpx
from argon2 import PasswordHasher

from bench import fanout_rows
from bench.fanout_serve import REPORT_ENV
from bench.fanout_wire import Commits, Prober, Reports
from bench.raw_fanout import RawFanout
from bench.results import Results
from bench.stack import PASSWORD, Stack, StackUnavailable, _serve, login, ready, running_stack

INSTANCES = 3
ROUNDS = 360
WARM_UP = 6
GIVE_UP = 10.0  # seconds: far past the staleness bound, so a timeout means something is broken
_CHEAP_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


class FanoutFailed(Exception):
    """A sample could not be taken: an unexpected answer, or no refusal within GIVE_UP seconds."""


@dataclass
class Samples:
    """Microseconds, by what was measured."""

    by: dict[str, list[float]] = field(default_factory=dict)
    polls: list[int] = field(default_factory=list)

    def add(self, what: str, micros: float) -> None:
        """Keep one sample."""
        self.by.setdefault(what, []).append(micros)


@dataclass
class Instances:
    """The three resource instances: their ports (as they report) and a prober on each."""

    ports: set[str]
    probers: list[Prober]


async def _until_refused(prober: Prober, request: bytes, since: int) -> tuple[int, int]:
    """Probe until a 401: when (monotonic ns) it was read, and after how many requests."""
    calls = 0
    while True:
        status = await prober.status(request)
        now = time.monotonic_ns()
        calls += 1
        if status == 401:
            return now, calls
        if status != 200:
            raise FanoutFailed(f"whoami after logout answered {status}")
        if now - since > GIVE_UP * 1e9:
            raise FanoutFailed(f"token still accepted {GIVE_UP:.0f} s after logout")


async def _tokenlife(
    auth: httpx.AsyncClient,
    stack: Stack,
    at: Instances,
    observed: tuple[Reports, Commits],
    probed: bool,
    into: Samples | None,
) -> None:
    reports, commits = observed
    token, _ = await login(auth, stack)
    requests = [p.request("/v1/whoami", token) for p in at.probers]
    before = await asyncio.gather(*(p.status(r) for p, r in zip(at.probers, requests, strict=True)))
    if any(status != 200 for status in before):
        raise FanoutFailed(f"whoami before logout answered {before}")
    reports.clear()
    commits.seen.clear()
    sent = time.monotonic_ns()
    out = await auth.post(f"{stack.auth_url}/v1/auth/logout", headers={"Authorization": f"Bearer {token}"})
    answered = time.monotonic_ns()
    if out.status_code != 200:
        raise FanoutFailed(f"logout answered {out.status_code}")
    position = int(out.json()["position"])  # the logout's revocation's place in the log
    if probed:
        refused = await asyncio.gather(
            *(_until_refused(p, r, answered) for p, r in zip(at.probers, requests, strict=True))
        )
    applied = await reports.first(at.ports, lambda what: int(what) >= position, GIVE_UP)
    if not probed:
        after = await asyncio.gather(*(p.status(r) for p, r in zip(at.probers, requests, strict=True)))
        if any(status != 401 for status in after):
            raise FanoutFailed(f"whoami after its instance applied the logout answered {after}")
    if into is None:
        return
    last_apply = max(applied.values())
    commit = next((t for t in commits.seen if t >= sent), None)
    mode = "probed" if probed else "resource"
    if probed:
        last = max(t for t, _ in refused)
        into.polls.append(max(n for _, n in refused))
        into.add("probed: last apply -> last 401 read", (last - last_apply) / 1000)
    else:
        last = last_apply
    into.add(f"{mode}: from 200", (last - answered) / 1000)
    into.add(f"{mode}: from sent", (last - sent) / 1000)
    into.add("logout round trip", (answered - sent) / 1000)
    if commit is not None:
        into.add("commit -> logout 200", (answered - commit) / 1000)
        into.add("commit -> last apply", (last_apply - commit) / 1000)
        into.add("commit -> first apply", (min(applied.values()) - commit) / 1000)


async def _raw(raw: RawFanout, name: str, i: int, into: Samples | None) -> None:
    delivered, confirmed = await raw.sample(i + 1)
    if into is not None:
        into.add(name, delivered)
        into.add(f"{name}: confirm", confirmed)


async def _rounds(
    stack: Stack, at: Instances, raws: tuple[RawFanout, RawFanout], reports: Reports
) -> Samples:
    samples = Samples()
    async with httpx.AsyncClient(timeout=10) as auth, Commits(stack.database_url) as commits:
        for i in range(WARM_UP + ROUNDS):
            into = samples if i >= WARM_UP else None
            steps: list[Callable[[], Awaitable[None]]] = [
                partial(_tokenlife, auth, stack, at, (reports, commits), i % 3 == 2, into),
                partial(_raw, raws[0], "raw apart", i, into),
                partial(_raw, raws[1], "raw here", i, into),
            ]
            for k in range(len(steps)):  # the order rotates from round to round
                await steps[(i + k) % len(steps)]()
    return samples


async def measure(stack: Stack, reports: Reports, report_to: str) -> Samples:
    """Start INSTANCES - 1 more resource services beside the stack's, and take the rounds."""
    async with AsyncExitStack() as held:
        started = [
            _serve(held, "resource", stack.resource_env, module="bench.fanout_serve")
            for _ in range(INSTANCES - 1)
        ]
        await asyncio.gather(*(ready(url, proc, log, "resource service") for url, proc, log in started))
        urls = [stack.resource_url, *(url for url, _, _ in started)]
        probers = [await held.enter_async_context(Prober(url)) for url in urls]
        at = Instances({url.rsplit(":", 1)[1] for url in urls}, probers)
        amqp = stack.resource_env["TOKENLIFE_AMQP_URL"]
        apart = await held.enter_async_context(RawFanout(amqp, reports, report_to=report_to))
        here = await held.enter_async_context(RawFanout(amqp))
        return await _rounds(stack, at, (apart, here), reports)


async def _cheap_password(database_url: str) -> None:
    # argon2 verifies with the parameters its hash carries: the deliberate tens of milliseconds of a
    # production hash would only slow each round's login, which is not timed.
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("UPDATE users SET password_hash = $1", _CHEAP_HASHER.hash(PASSWORD))
    finally:
        await conn.close()


async def run(results: Results) -> None:
    """Start a stack, measure, and record; skipped rows and unmeasured targets when something failed."""
    reports = Reports()
    report_to = await reports.open()
    try:
        async with running_stack(
            prepare=_cheap_password,
            resource_module="bench.fanout_serve",
            resource_env={REPORT_ENV: report_to},
        ) as stack:
            samples = await measure(stack, reports, report_to)
    except (StackUnavailable, FanoutFailed, TimeoutError, OSError, httpx.HTTPError, RuntimeError) as exc:
        fanout_rows.skipped(results, " ".join(f"{type(exc).__name__}: {exc}".split())[:200])
        return
    finally:
        reports.close()
    fanout_rows.record(results, samples.by, samples.polls)


def main() -> int:
    """Run the fan-out benchmark alone and print it."""
    results = Results()
    asyncio.run(run(results))
    results.print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
