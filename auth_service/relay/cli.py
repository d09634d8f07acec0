"""`tokenlife relay`: run the relay alone (standby until it holds the leader lock), with /metrics if asked."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from typing import Any

from auth_service.settings import AuthSettings

log = logging.getLogger("tokenlife.relay")


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
