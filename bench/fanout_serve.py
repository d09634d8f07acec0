"""The processes of bench/fanout.py that report, the moment it happens, what they applied or received.

    python -m bench.fanout_serve resource serve --host H --port P
        `tokenlife resource serve` itself (the same app, settings and uvicorn) with one more hook on its
        feed: each event applied, from whichever transport, is reported as it is applied. From that moment the
        instance refuses the revoked token (the Guard reads the state on every request).
    python -m bench.fanout_serve consume AMQP_URL EXCHANGE
        a plain aio-pika consumer, the baseline's: its own connection and exclusive queue bound to "#",
        prefetch as a resource service's; each message decoded, reported, then acknowledged.

Reports are UDP datagrams "<port or pid> <position or message id> <monotonic ns>" to BENCH_FANOUT_REPORT
(host:port). CLOCK_MONOTONIC is one clock for every process of the machine, so the benchmark compares these
times with its own. A datagram costs a process one non-blocking send.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

REPORT_ENV = "BENCH_FANOUT_REPORT"
PREFETCH = 100  # ResourceSettings.prefetch's default


def reporter(name: str) -> Callable[[object], None]:
    """A function sending "<name> <what> <now>" to the benchmark (a no-op when the variable is unset)."""
    where = os.environ.get(REPORT_ENV, "")
    if not where:
        return lambda _what: None
    host, port = where.rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.connect((host, int(port)))

    def report(what: object) -> None:
        try:
            sock.send(f"{name} {what} {time.monotonic_ns()}".encode())
        except OSError:
            pass  # a lost report shows up as a sample the benchmark could not take

    return report


def _resource(host: str, port: int) -> None:
    import logging

    import uvicorn
    from fastapi import FastAPI

    from resource_service.app import Runtime, create_app
    from resource_service.settings import ResourceSettings

    # As tokenlife/cli.py configures it for `tokenlife resource serve`.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    app = create_app(ResourceSettings())
    inner = app.router.lifespan_context
    report = reporter(str(port))  # the benchmark knows an instance by its port

    @asynccontextmanager
    async def lifespan(served: FastAPI) -> AsyncIterator[None]:
        async with inner(served):
            runtime: Runtime = served.state.runtime
            state = runtime.feed.state
            # Called right after the state changed, before the message is acknowledged.
            runtime.feed.on_applied.append(lambda _delay, _exemplar: report(state.applied_position))
            yield

    app.router.lifespan_context = lifespan
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)


async def _consume(amqp_url: str, exchange: str) -> None:
    import aio_pika
    from aio_pika.abc import AbstractIncomingMessage

    report = reporter(str(os.getpid()))
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=PREFETCH)
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(exchange, routing_key="#")

    async def delivered(message: AbstractIncomingMessage) -> None:
        json.loads(message.body)  # a resource service decodes every message
        report(message.message_id)
        await message.ack()

    await queue.consume(delivered)
    report("ready")
    await asyncio.Future()  # until killed


def main(argv: list[str]) -> int:
    """`resource serve --host H --port P`, or `consume AMQP_URL EXCHANGE`."""
    if argv[:2] == ["resource", "serve"]:
        args = dict(zip(argv[2::2], argv[3::2], strict=True))
        _resource(args.get("--host", "127.0.0.1"), int(args.get("--port", "8001")))
        return 0
    if len(argv) == 3 and argv[0] == "consume":
        try:
            import uvloop
        except ImportError:  # uvicorn falls back the same way
            asyncio.run(_consume(argv[1], argv[2]))
        else:
            uvloop.run(_consume(argv[1], argv[2]))
        return 0
    print(__doc__, file=sys.stderr)  # noqa: T201
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
