"""Per-request cost of asking the auth service (RFC 7662 introspection) against tokenlife's local check.

Both are whole HTTP requests on loopback, sequential, over one persistent httpx client, against the running
stack: POST /oauth/introspect at the auth service, and the resource service's protected GET /v1/whoami.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import httpx

from bench.stack import Stack, login
from bench.timing import summarise

# The latest run's samples by picture label (read by bench/__main__.py for docs/benchmark-latency.png).
last_samples: dict[str, list[float]] = {}

N = 500
WARMUP = 20

INTROSPECT_CASE = "POST /oauth/introspect (loopback)"
WHOAMI_CASE = "GET /v1/whoami, resource service (loopback)"


async def _timed(call: Callable[[], Awaitable[httpx.Response]], expect: int, n: int) -> list[float]:
    """n sequential calls in microseconds each; every answer must carry the status `expect`."""
    samples = []
    for _ in range(n):
        start = time.perf_counter_ns()
        response = await call()
        samples.append((time.perf_counter_ns() - start) / 1000)
        if response.status_code != expect:
            raise RuntimeError(f"answered {response.status_code}, expected {expect}: {response.text[:200]}")
    return samples


async def _introspect(stack: Stack, token: str) -> dict[str, object]:
    async with httpx.AsyncClient(base_url=stack.auth_url, auth=stack.service_client, timeout=10) as client:
        first = await client.post("/oauth/introspect", data={"token": token})
        if first.status_code != 200 or first.json().get("active") is not True:
            raise RuntimeError(
                f"introspection of a live token answered {first.status_code}: {first.text[:200]}"
            )

        def call() -> Awaitable[httpx.Response]:
            return client.post("/oauth/introspect", data={"token": token})

        await _timed(call, 200, WARMUP)
        samples = await _timed(call, 200, N)
    last_samples["introspection (loopback HTTP)"] = samples
    return summarise(
        INTROSPECT_CASE,
        samples,
        "alternative, per request: HTTP Basic client check, ES256 verify (uncached), "
        "revocation query in PostgreSQL, one transaction",
    )


async def _whoami(stack: Stack, token: str) -> dict[str, object]:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=stack.resource_url, headers=headers, timeout=10) as client:

        def call() -> Awaitable[httpx.Response]:
            return client.get("/v1/whoami")

        await _timed(call, 200, WARMUP)
        samples = await _timed(call, 200, N)
    return summarise(
        WHOAMI_CASE,
        samples,
        "tokenlife, the whole protected request: JWT verify via LRU + in-memory revocation check",
    )


async def run(stack: Stack) -> list[dict[str, object]]:
    """Rows for introspection at the auth service and the resource service's local check, per request."""
    try:
        async with httpx.AsyncClient(timeout=10) as auth:
            token, _ = await login(auth, stack)
    except (httpx.HTTPError, RuntimeError) as exc:
        return skipped_rows(f"login failed: {exc}")
    rows: list[dict[str, object]] = []
    for case, measure in ((INTROSPECT_CASE, _introspect), (WHOAMI_CASE, _whoami)):
        try:
            rows.append(await measure(stack, token))
        except (httpx.HTTPError, RuntimeError) as exc:
            rows.append({"case": case, "median_us": None, "p99_us": None, "note": f"failed: {exc}"})
    return rows


def skipped_rows(reason: str) -> list[dict[str, object]]:
    """This module's rows when the stack could not be started."""
    return [
        {"case": case, "median_us": None, "p99_us": None, "note": f"skipped: {reason}"}
        for case in (INTROSPECT_CASE, WHOAMI_CASE)
    ]
