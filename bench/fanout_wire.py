"""What bench/fanout.py observes with: the processes' reports, the commits, and a lean HTTP prober.

Every time here is time.monotonic_ns(), the machine's CLOCK_MONOTONIC, the clock the reporting processes use
too (bench/fanout_serve.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from auth_service.log.store import NOTIFY_CHANNEL


class Reports(asyncio.DatagramProtocol):
    """Receives the processes' datagrams "<name> <what> <ns>"; `first()` awaits one report from each name."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str, int]] = []
        self._arrived = asyncio.Event()
        self._transport: asyncio.DatagramTransport | None = None

    async def open(self) -> str:
        """Listen on a free loopback port; its "host:port"."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        self._transport = transport
        host, port = transport.get_extra_info("sockname")[:2]
        return f"{host}:{port}"

    def close(self) -> None:
        """Stop listening."""
        if self._transport is not None:
            self._transport.close()

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        """Keep one report."""
        name, what, at = data.decode().split()
        self.received.append((name, what, int(at)))
        self._arrived.set()

    def clear(self) -> None:
        """Forget the reports received so far."""
        self.received.clear()

    async def first(self, names: set[str], matches: Callable[[str], bool], within: float) -> dict[str, int]:
        """For each name, the time of its first report whose `what` matches; TimeoutError if not all came."""
        async with asyncio.timeout(within):
            while True:
                found: dict[str, int] = {}
                for name, what, at in self.received:
                    if name in names and name not in found and matches(what):
                        found[name] = at
                if len(found) == len(names):
                    return found
                self._arrived.clear()
                await self._arrived.wait()


class Commits:
    """LISTEN on the log's NOTIFY channel, delivered at commit as to the relay: when each commit was seen."""

    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._conn: Any = None
        self.seen: list[int] = []

    async def __aenter__(self) -> Commits:
        self._conn = await asyncpg.connect(self._url)
        await self._conn.add_listener(NOTIFY_CHANNEL, self._notified)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._conn.close()

    def _notified(self, *_args: object) -> None:
        self.seen.append(time.monotonic_ns())


class Prober:
    """GET one path over one persistent HTTP/1.1 connection, with a request prepared once: a probe's own cost
    is a write and a read, so that polling as fast as it can takes little CPU from the services."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 80
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> Prober:
        self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._writer is not None:
            self._writer.close()

    def request(self, path: str, token: str) -> bytes:
        """The bytes of a GET with a bearer token."""
        return (
            f"GET {path} HTTP/1.1\r\nHost: {self._host}:{self._port}\r\nAuthorization: Bearer {token}\r\n\r\n"
        ).encode()

    async def status(self, request: bytes) -> int:
        """Send a prepared request; the answer's status (its body read and dropped)."""
        assert self._reader is not None
        assert self._writer is not None
        self._writer.write(request)
        head = await self._reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length:
            await self._reader.readexactly(length)
        return int(head.split(b" ", 2)[1])
