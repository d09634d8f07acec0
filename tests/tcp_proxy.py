"""A small asyncio TCP proxy for fault injection in tests: cut connections, refuse new ones, blackhole.

Put it between a client and a server (a relay and RabbitMQ, a service and PostgreSQL) and point the client at
`proxy.host:proxy.port`::

    async with TcpProxy("127.0.0.1", 5672) as proxy:
        ...connect to proxy.port...
        proxy.cut()          # every open connection is reset; new ones are accepted and forwarded
        proxy.refuse()       # new connections are reset at once (until heal())
        proxy.blackhole()    # connections stay open but nothing is forwarded any more: the peer goes silent
        proxy.heal()         # forward again; connections that lost bytes in the blackhole are cut

A blackholed connection cannot resume: the bytes it dropped break whatever protocol runs over it, so heal()
cuts it and the client must reconnect, as it would after a real network partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

_CHUNK = 65536


@dataclass(eq=False)
class _Link:
    """One proxied connection: the accepted client side and, unless opened in the blackhole, the upstream."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tainted: bool = False
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def reset(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                _reset(writer)


def _reset(writer: asyncio.StreamWriter) -> None:
    # SO_LINGER 0 makes close() send a RST, so the peer sees "connection reset" rather than a clean EOF.
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class TcpProxy:
    """Forwards TCP connections from 127.0.0.1:<port> to a target, with switches to inject faults."""

    def __init__(self, target_host: str, target_port: int, *, listen_host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = listen_host
        self.port = 0
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._refusing = False
        self._blackholed = False

    async def start(self) -> None:
        """Listen on an ephemeral port (see `port`)."""
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening and reset every connection."""
        if self._server is not None:
            self._server.close()
        tasks = [t for link in self._links for t in link.tasks]
        for link in list(self._links):
            link.reset()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def connections(self) -> int:
        """How many connections are open through the proxy now."""
        return len(self._links)

    def cut(self) -> int:
        """Reset every open connection (new ones are still accepted); returns how many were cut."""
        links = list(self._links)
        for link in links:
            link.reset()
        return len(links)

    def refuse(self) -> None:
        """Reset every new connection as soon as it is accepted, until heal()."""
        self._refusing = True

    def blackhole(self) -> None:
        """Stop forwarding on every connection, open or new: bytes are read and dropped, nothing answers."""
        self._blackholed = True
        for link in self._links:
            link.tainted = True

    def heal(self) -> None:
        """Forward normally again; connections that lost bytes in the blackhole are cut."""
        self._refusing = False
        self._blackholed = False
        for link in list(self._links):
            if link.tainted:
                link.reset()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self._refusing:
            _reset(writer)
            return
        link = _Link(client=writer, tainted=self._blackholed)
        task = asyncio.current_task()
        if task is not None:
            link.tasks.add(task)
        self._links.add(link)
        try:
            if link.tainted:
                # Accepted in the blackhole: never reaches the target; just swallow what the client sends.
                await self._pipe(reader, None, link)
                return
            try:
                up_reader, link.upstream = await asyncio.open_connection(self.target_host, self.target_port)
            except OSError:
                return
            await asyncio.gather(self._pipe(reader, link.upstream, link), self._pipe(up_reader, writer, link))
        finally:
            self._links.discard(link)
            link.reset()

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter | None, link: _Link) -> None:
        try:
            while chunk := await src.read(_CHUNK):
                if self._blackholed or link.tainted or dst is None:
                    continue
                dst.write(chunk)
                await dst.drain()
        except OSError:
            pass
        finally:
            # Either direction ending ends the connection: close both sides so the other pipe finishes too.
            link.reset()
