"""Logout to refusal over long-poll alone: a resource service given no broker at all, beside the broker path.

It starts one more `tokenlife resource serve` on the running stack with TOKENLIFE_AMQP_URL empty, so
revocations reach it only by long-poll of the auth service's events API (held until the logout commits), and
measures it exactly as bench/propagation.py measures the broker path: logout's 200 to the first 401.
`python -m bench.longpoll` runs it alone and prints both rows.
"""

from __future__ import annotations

import asyncio
import json
import sys
from contextlib import AsyncExitStack

from bench import propagation
from bench.stack import SERVICE_CLIENT, Stack, StackUnavailable, _serve, ready, running_stack

LONG_POLL_CASE = "logout -> 401 at resource (long-poll only, no broker)"


async def run(stack: Stack) -> list[dict[str, object]]:
    """One row: logout -> 401 at a resource service that has no broker and long-polls the log."""
    env = {
        "TOKENLIFE_ENV": "dev",
        "TOKENLIFE_AUTH_URL": stack.auth_url,
        "TOKENLIFE_AMQP_URL": "",
        "TOKENLIFE_SERVICE_CLIENT_ID": SERVICE_CLIENT[0],
        "TOKENLIFE_SERVICE_CLIENT_SECRET": SERVICE_CLIENT[1],
    }
    try:
        async with AsyncExitStack() as processes:
            url, proc, log = _serve(processes, "resource", env)
            await ready(url, proc, log, "long-poll resource service")
            return [
                await propagation.measure(
                    stack,
                    url,
                    LONG_POLL_CASE,
                    "tokenlife: GET /v1/events?wait held at the auth service, woken by LISTEN/NOTIFY; "
                    "logout at a random phase of the hold",
                    jitter=1.0,
                )
            ]
    except StackUnavailable as exc:
        return skipped_rows(" ".join(str(exc).split())[:200])


def skipped_rows(reason: str) -> list[dict[str, object]]:
    """This module's row when the stack could not be started."""
    return [propagation.skipped(LONG_POLL_CASE, reason)]


async def _both() -> list[dict[str, object]]:
    try:
        async with running_stack() as stack:
            broker = await propagation.measure(
                stack, stack.resource_url, propagation.BROKER_CASE, "broker push"
            )
            return [broker, *await run(stack)]
    except StackUnavailable as exc:
        return skipped_rows(str(exc))


if __name__ == "__main__":
    for row in asyncio.run(_both()):
        print(json.dumps(row))  # noqa: T201 - the benchmark's output
    sys.exit(0)
