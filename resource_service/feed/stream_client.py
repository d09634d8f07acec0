"""The resource side's client of RabbitMQ's stream protocol (rstream): where the stream is, whether the
protocol answers (one clear line when it does not), and the timestamp of the stream's first retained chunk."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from rstream import Consumer, ConsumerOffsetSpecification, MessageContext, OffsetType
from rstream.exceptions import ClientError, ServerError, StreamNotAvailable

from amqpkit.streams import stream_name
from resource_service.settings import ResourceSettings

__all__ = ["STREAM_ERRORS", "StreamUnavailable", "check_stream", "consumer", "first_timestamp"]

log = logging.getLogger("tokenlife.feed")

# What a stream connection or request can raise when the broker, the plugin or the link fails.
STREAM_ERRORS = (OSError, TimeoutError, ServerError, ClientError, asyncio.IncompleteReadError)


class StreamUnavailable(Exception):
    """RabbitMQ's stream protocol does not answer (plugin off, port closed, refused): the text says which."""


@dataclass(frozen=True)
class _Address:
    host: str
    port: int
    vhost: str
    username: str
    password: str


def _address(settings: ResourceSettings) -> _Address:
    # The broker's AMQP URL names the host, the account and the vhost; the stream port is its own setting.
    url = urlsplit(settings.amqp_url.get_secret_value())
    vhost = unquote(url.path[1:]) if len(url.path) > 1 else "/"
    return _Address(
        url.hostname or "127.0.0.1",
        settings.stream_port,
        vhost,
        unquote(url.username or ""),
        unquote(url.password or ""),
    )


def consumer(settings: ResourceSettings, on_close: Callable[[Any], None] | None = None) -> Consumer:
    """An rstream Consumer for the broker of the settings (not connected yet); `on_close` hears of a loss."""
    a = _address(settings)
    return Consumer(
        a.host,
        a.port,
        vhost=a.vhost,
        username=a.username,
        password=a.password,
        connection_name="tokenlife-resource",
        on_close_handler=on_close,
        # The data connection goes to the node that holds a replica, at the host the node advertises
        # (stream.advertised_host); behind a load balancer or a proxy that host is unreachable or bypasses
        # it, so rstream connects through the configured address until the node it wants answers there.
        load_balancer_mode=settings.stream_load_balancer,
    )


async def check_stream(settings: ResourceSettings) -> None:
    """Connect and authenticate over the stream protocol; StreamUnavailable in one line if that fails."""
    a = _address(settings)
    reader = consumer(settings)
    try:
        async with asyncio.timeout(settings.http_timeout):
            await reader.start()
            exists = await reader.stream_exists(stream_name(settings.exchange))
    except StreamNotAvailable:
        # The protocol answered: the stream exists and its leader is still being placed (a relay declaring it
        # at this moment). The stream transport's session retries until it is readable.
        exists = True
    except STREAM_ERRORS as exc:
        raise StreamUnavailable(
            f"RabbitMQ's stream protocol does not answer at {a.host}:{a.port} ({type(exc).__name__}: {exc}); "
            "is the rabbitmq_stream plugin enabled (rabbitmq-plugins enable rabbitmq_stream)?"
        ) from None
    finally:
        with contextlib.suppress(*STREAM_ERRORS):
            await reader.close()
    if not exists:
        # Not an error: the relay declares it on its next connection (or `tokenlife broker setup` ahead).
        log.info("stream %s is not declared yet; reading starts once the relay declares it", a.host)


async def first_timestamp(settings: ResourceSettings, within: float) -> float | None:
    """The timestamp (seconds) of the stream's first retained chunk, or None when it holds nothing."""
    found: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def first(_message: bytes, context: MessageContext) -> None:
        if not found.done():
            found.set_result(context.timestamp / 1000)

    reader = consumer(settings)
    try:
        await reader.start()
        await reader.subscribe(
            stream_name(settings.exchange),
            first,
            offset_specification=ConsumerOffsetSpecification(OffsetType.FIRST, None),
            initial_credit=1,
        )
        async with asyncio.timeout(within):
            return await found
    except TimeoutError:
        return None  # an empty stream: nothing to prove anything with
    finally:
        with contextlib.suppress(*STREAM_ERRORS):
            await reader.close()
