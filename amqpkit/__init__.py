"""What both services need of aio-pika beyond its own API: closing a connection so nothing is left behind.

A top-level package because the relay (auth_service) and the broker feed (resource_service) both close
connections and neither may import the other. It imports aio-pika and the standard library, nothing of the
project.
"""

from __future__ import annotations

import asyncio
import logging

from aio_pika.abc import AbstractConnection
from aio_pika.exceptions import CONNECTION_EXCEPTIONS

log = logging.getLogger("tokenlife.amqp")

# What a connection's close can raise when the broker or the link is already gone.
CLOSE_ERRORS = (*CONNECTION_EXCEPTIONS, TimeoutError)


async def close_connection(connection: AbstractConnection, within: float | None = None) -> None:
    """Close the connection (waiting `within` seconds at most), never raising for a link already gone."""
    try:
        await asyncio.wait_for(connection.close(), within)
    except CLOSE_ERRORS as exc:
        log.debug("closing the broker connection failed: %r", exc)
    # aiormq ends a connection in tasks that its reader's done callback starts after close() returned: a few
    # passes of the loop let them end, so none is left pending (and destroyed) when the caller's loop stops.
    for _ in range(8):
        await asyncio.sleep(0)
