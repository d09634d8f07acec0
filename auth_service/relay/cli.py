"""`tokenlife relay`: run the relay alone (standby until it holds the leader lock), with /metrics if asked;
`tokenlife broker setup`: declare what the relay publishes to (the exchange, and the stream) ahead of it."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from typing import Any

from aio_pika.exceptions import AMQPException

from auth_service.settings import AuthSettings

log = logging.getLogger("tokenlife.relay")

# A refused connection, bad credentials, a declaration that conflicts with one already there.
_SETUP_ERRORS = (AMQPException, OSError, TimeoutError)


# Flags that override a TOKENLIFE_RELAY_* setting: (flag, type, meaning).
_OPTIONS: tuple[tuple[str, type, str], ...] = (
    ("--heartbeat-interval", float, "seconds between heartbeats"),
    ("--poll-interval", float, "seconds between backstop polls"),
    ("--publish-timeout", float, "seconds to wait for a confirm"),
    ("--batch-size", int, "events per confirmed batch"),
    ("--leader-retry-interval", float, "seconds between standby lock attempts"),
    ("--max-backoff", float, "longest wait between reconnects"),
)


def register(subparsers: Any) -> None:
    """Add the `relay` subcommand to the tokenlife command line."""
    parser = subparsers.add_parser(
        "relay", help="publish the event log to RabbitMQ (one leader among all instances)"
    )
    for flag, kind, meaning in _OPTIONS:
        parser.add_argument(flag, type=kind, default=None, help=f"{meaning} (default: from the settings)")
    parser.add_argument("--metrics-port", type=int, default=0, help="serve /metrics on this port (0: off)")
    parser.set_defaults(func=_relay)

    broker = subparsers.add_parser("broker", help="the RabbitMQ topology").add_subparsers(
        dest="broker_command", required=True
    )
    setup = broker.add_parser(
        "setup", help="declare the exchange and, with TOKENLIFE_TRANSPORT=stream or --stream, its stream"
    )
    setup.add_argument("--stream", action="store_true", help="declare the stream whatever the transport")
    setup.set_defaults(func=_setup)


def _setup(args: argparse.Namespace) -> int:
    settings = AuthSettings()
    if args.stream and settings.stream is None:
        settings = settings.model_copy(update={"transport": "stream"})
    try:
        declared = asyncio.run(_declare(settings))
    except _SETUP_ERRORS as exc:
        print(f"tokenlife: broker setup failed: {type(exc).__name__}: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    print("declared: " + ", ".join(declared))  # noqa: T201
    return 0


async def _declare(settings: AuthSettings) -> list[str]:
    import aio_pika

    from amqpkit import close_connection
    from amqpkit.streams import declare_stream

    connection = await aio_pika.connect(settings.amqp_url.get_secret_value(), timeout=10)
    try:
        channel = await connection.channel()
        await channel.declare_exchange(settings.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        declared = [f"exchange {settings.exchange} (topic, durable)"]
        stream = settings.stream
        if stream is not None:
            name = await declare_stream(
                channel, settings.exchange, max_age=stream.max_age, max_bytes=stream.max_bytes
            )
            declared.append(
                f"stream {name} (x-max-age {stream.max_age}s, x-max-length-bytes {stream.max_bytes}), "
                "bound with #"
            )
        return declared
    finally:
        await close_connection(connection)


def _relay(args: argparse.Namespace) -> int:
    settings = AuthSettings()
    settings.announce()
    asyncio.run(_serve(settings, args))
    return 0


async def _serve(settings: AuthSettings, args: argparse.Namespace) -> None:
    from prometheus_client import start_http_server

    from auth_service.relay.loop import Relay
    from looplag import LoopLag

    overrides = {
        name: getattr(args, name)
        for name in (flag.removeprefix("--").replace("-", "_") for flag, _, _ in _OPTIONS)
        if getattr(args, name) is not None
    }
    relay = Relay.from_settings(settings, relay=settings.relay.model_copy(update=overrides))
    loop_lag = LoopLag(relay.metrics.registry)
    if args.metrics_port:
        start_http_server(args.metrics_port, registry=relay.metrics.registry)
        loop_lag.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        # Stop cleanly: closing the lock connection hands leadership over without waiting for a timeout.
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stopping.set)
    log.info("relay: publishing to exchange %r", settings.exchange)
    await relay.start()
    try:
        await stopping.wait()
    finally:
        await relay.stop()
        await loop_lag.stop()
