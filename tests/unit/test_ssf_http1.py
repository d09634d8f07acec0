"""The push stream's HTTP/1.1 connection (auth_service/ssf/http1.py) against a real TCP server on loopback
that answers in each framing HTTP/1.1 allows, closes idle connections, or never answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from auth_service.ssf.http1 import Connection, PushFailed

ANSWERS = {
    "/length": b"HTTP/1.1 400 Bad Request\r\nContent-Length: 11\r\n\r\ninvalid_key",
    "/chunked": b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n2;x=1\r\nde\r\n0\r\n\r\n",
    "/close": b"HTTP/1.1 202 Accepted\r\nConnection: close\r\n\r\nuntil the end",
    "/http10": b"HTTP/1.0 202 Accepted\r\nContent-Length: 0\r\n\r\n",
    "/once": b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n",  # then the server closes it
    "/garbage": b"SSH-2.0-OpenSSH\r\n\r\n",
}


class Server:
    """Reads each request (head + Content-Length body) and writes the answer its path names."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                self.requests.append(head + await reader.readexactly(length))
                path = head.split(b" ")[1].decode().split("?")[0]
                if path == "/hang":
                    await reader.read()  # never answers; ends when the client gives up and closes
                    break
                writer.write(ANSWERS[path])
                await writer.drain()
                if path in ("/close", "/once", "/http10"):
                    break
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    state = Server()
    listener = await asyncio.start_server(state.handle, "127.0.0.1", 0)
    state.port = listener.sockets[0].getsockname()[1]
    async with listener:
        yield state


async def test_keeps_one_connection_and_reads_a_length_framed_answer(server: Server) -> None:
    conn = Connection(f"http://127.0.0.1:{server.port}/length?x=1", timeout=2)
    for _ in range(3):
        answer = await conn.post(b"a.b.c", {"Content-Type": "application/secevent+jwt"})
        assert (answer.status, answer.body) == (400, b"invalid_key")
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"POST /length?x=1 HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{server.port}\r\n".encode() in first
    assert first.endswith(b"Content-Length: 5\r\n\r\na.b.c")
    conn.close()


async def test_reads_chunked_and_close_delimited_answers(server: Server) -> None:
    chunked = Connection(f"http://127.0.0.1:{server.port}/chunked", timeout=2)
    assert (await chunked.post(b"x", {})).body == b"abcde"
    assert (await chunked.post(b"x", {})).status == 202
    assert server.connections == 1
    chunked.close()
    closing = Connection(f"http://127.0.0.1:{server.port}/close", timeout=2)
    for _ in range(2):
        answer = await closing.post(b"x", {})
        assert (answer.status, answer.body) == (202, b"until the end")
    assert server.connections == 3  # a new connection after each Connection: close


async def test_an_idle_connection_closed_by_the_receiver_is_replaced(server: Server) -> None:
    for path in ("/once", "/http10"):
        conn = Connection(f"http://127.0.0.1:{server.port}{path}", timeout=2)
        for _ in range(3):
            await asyncio.sleep(0.05)  # the server has closed the connection by now
            assert (await conn.post(b"x", {})).status == 202
        conn.close()
    assert server.connections == 6


async def test_timeouts_refusals_and_garbage_fail_as_push_failed(server: Server) -> None:
    with pytest.raises(PushFailed, match="Timeout"):
        await Connection(f"http://127.0.0.1:{server.port}/hang", timeout=0.2).post(b"x", {})
    with pytest.raises(PushFailed, match="HTTP"):
        await Connection(f"http://127.0.0.1:{server.port}/garbage", timeout=2).post(b"x", {})
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    with pytest.raises(PushFailed):
        await Connection(f"http://127.0.0.1:{port}/", timeout=2).post(b"x", {})
    with pytest.raises(ValueError, match="not an http"):
        Connection("ftp://example.com/", timeout=1)
