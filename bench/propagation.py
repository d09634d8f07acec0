"""How long a logged-out token keeps working: from logout's 200 to the resource service's first 401.

Each sample: log in, check GET /v1/whoami answers 200, POST /v1/auth/logout, then ask /v1/whoami again, as
fast as one persistent client can, until it answers 401. Measured through the broker (the relay pushes the
revocation over RabbitMQ) and, as the alternative, through a resource service that cannot reach the broker
and so learns of revocations only by polling the auth service's log over HTTP.
"""

from __future__ import annotations

import asyncio
import random
import time

import httpx

from bench.stack import Stack, login
from bench.timing import summarise

# The latest run's samples by picture label (read by bench/__main__.py for docs/benchmark-latency.png).
last_samples: dict[str, list[float]] = {}

N = 50
GIVE_UP = 15.0  # seconds; far past the poll-only bound, so a timeout means something is broken
POLL_INTERVAL = 1.0

BROKER_CASE = "logout -> 401 at resource (broker push)"
POLL_CASE = "logout -> 401 at resource (broker unreachable: long-poll fallback)"
TTL_CASE = "short-TTL-only: a logged-out token stays valid until exp"


class PropagationFailed(Exception):
    """A sample could not be taken: an unexpected answer, or no 401 within GIVE_UP seconds."""


async def sample(
    auth: httpx.AsyncClient, resource: httpx.AsyncClient, stack: Stack, delay: float
) -> tuple[float, int]:
    """One logout's propagation time in microseconds, and how many whoami calls it took to see the 401."""
    token, _ = await login(auth, stack)
    bearer = {"Authorization": f"Bearer {token}"}
    first = await resource.get("/v1/whoami", headers=bearer)
    if first.status_code != 200:
        raise PropagationFailed(f"whoami before logout answered {first.status_code}")
    await asyncio.sleep(delay)
    out = await auth.post(f"{stack.auth_url}/v1/auth/logout", headers=bearer)
    started = time.perf_counter_ns()
    if out.status_code != 200:
        raise PropagationFailed(f"logout answered {out.status_code}")
    polls = 0
    while True:
        response = await resource.get("/v1/whoami", headers=bearer)
        now = time.perf_counter_ns()
        polls += 1
        if response.status_code == 401:
            return (now - started) / 1000, polls
        if response.status_code != 200:
            raise PropagationFailed(f"whoami after logout answered {response.status_code}")
        if now - started > GIVE_UP * 1e9:
            raise PropagationFailed(f"token still accepted {GIVE_UP:.0f} s after logout")


async def measure(
    stack: Stack, resource_url: str, case: str, note: str, jitter: float = 0.0
) -> dict[str, object]:
    """N samples; a random pause (up to `jitter` s) before each logout decouples them from a poller."""
    rng = random.Random(7)
    samples: list[float] = []
    polls: list[int] = []
    try:
        async with (
            httpx.AsyncClient(timeout=10) as auth,
            httpx.AsyncClient(base_url=resource_url, timeout=10) as resource,
        ):
            for _ in range(N):
                micros, count = await sample(auth, resource, stack, rng.uniform(0, jitter))
                samples.append(micros)
                polls.append(count)
    except (PropagationFailed, httpx.HTTPError, RuntimeError) as exc:
        return {
            "case": case,
            "median_us": None,
            "p99_us": None,
            "note": f"failed after {len(samples)}: {exc}",
        }
    polls.sort()
    last_samples[f"propagation: {case}"] = samples
    return summarise(case, samples, f"{note}; n={N}, median {polls[len(polls) // 2]} whoami calls until 401")


async def run(stack: Stack) -> list[dict[str, object]]:
    """Rows for revocation propagation by broker push and by HTTP polling, and the short-TTL-only baseline."""
    rows = [
        await measure(
            stack,
            stack.resource_url,
            BROKER_CASE,
            "tokenlife: relay LISTEN/NOTIFY -> RabbitMQ -> in-memory state; resolution one whoami round trip",
        )
    ]
    if stack.poll_only_url is None:
        rows.append(skipped(POLL_CASE, "the stack has no poll-only resource service"))
    else:
        rows.append(
            await measure(
                stack,
                stack.poll_only_url,
                POLL_CASE,
                "tokenlife with its broker unreachable: no heartbeats, so the feed long-polls the events "
                f"API; logout at a random phase of up to {POLL_INTERVAL:g} s",
                jitter=POLL_INTERVAL,
            )
        )
    async with httpx.AsyncClient(timeout=10) as auth:
        try:
            _, ttl = await login(auth, stack)
            rows.append(_ttl_row(f"{ttl} s (access token expires_in from this run's login)"))
        except (httpx.HTTPError, RuntimeError) as exc:
            rows.append(_ttl_row(f"access token TTL unknown: {exc}"))
    return rows


def _ttl_row(what: str) -> dict[str, object]:
    return {"case": TTL_CASE, "median_us": None, "p99_us": None, "note": f"not a measurement: up to {what}"}


def skipped(case: str, reason: str) -> dict[str, object]:
    """A row that says why a case was not measured."""
    return {"case": case, "median_us": None, "p99_us": None, "note": f"skipped: {reason}"}


def skipped_rows(reason: str) -> list[dict[str, object]]:
    """This module's rows when the stack could not be started."""
    from auth_service.settings import AuthSettings

    default = AuthSettings.model_fields["access_token_ttl"].default
    return [
        skipped(BROKER_CASE, reason),
        skipped(POLL_CASE, reason),
        _ttl_row(f"{default} s (TOKENLIFE_ACCESS_TOKEN_TTL's default)"),
    ]
