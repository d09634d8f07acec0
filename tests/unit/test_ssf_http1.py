"""The push stream's HTTP/1.1 connection (auth_service/ssf/http1.py) against a real TCP server on loopback
that answers in each framing HTTP/1.1 allows, with interim answers, malformed or endless answers, closes or
resets idle connections (under asyncio's loop and uvloop), or never answers."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvloop

from auth_service.ssf.http1 import MAX_BODY, Answer, Connection, PushFailed

BIG = 4 * 1024 * 1024  # bytes a hostile answer sends before it stalls: more than the client reads

ANSWERS = {
    "/length": b"HTTP/1.1 400 Bad Request\r\nContent-Length: 11\r\n\r\ninvalid_key",
    "/chunked": b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n2;x=1\r\nde\r\n0\r\n\r\n",
    "/close": b"HTTP/1.1 202 Accepted\r\nConnection: close\r\n\r\nuntil the end",
    "/http10": b"HTTP/1.0 202 Accepted\r\nContent-Length: 0\r\n\r\n",
    "/once": b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n",  # then the server closes it
    "/garbage": b"SSH-2.0-OpenSSH\r\n\r\n",
    "/interim": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
    b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\nok",
    "/switch": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
    "/empty": b"HTTP/1.1 204 No Content\r\n\r\n",
    "/trailers": b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-T: 1\r\n\r\n",
    "/both": b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n"
    b"2\r\nok\r\n0\r\n\r\n",
    "/gzip": b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: gzip\r\n\r\nto the close",
    "/status4": b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
    "/status-space": b"HTTP/1.1  20 OK\r\nContent-Length: 0\r\n\r\n",
    "/lengths": b"HTTP/1.1 202 Accepted\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nok",
    "/fold": b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nX-A: a\r\n b\r\n\r\n",
    "/crlf": b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXY0\r\n\r\n",
    # Hostile: a body declared (or delimited) far beyond what the client keeps, then a stall.
    "/huge-chunk": b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n7fffffff\r\n" + b"x" * BIG,
    "/huge-close": b"HTTP/1.1 202 Accepted\r\nConnection: close\r\n\r\n" + b"x" * BIG,
    "/huge-length": b"HTTP/1.1 202 Accepted\r\nContent-Length: 99999999999\r\n\r\n" + b"x" * BIG,
}
OTHERWISE = b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"
HOLD = ("/hang", "/huge-chunk", "/huge-close", "/huge-length")  # the server then waits for the client


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
                if path != "/hang":
                    writer.write(ANSWERS.get(path, OTHERWISE))
                    await writer.drain()
                if path in HOLD:
                    await reader.read()  # ends when the client gives up and closes
                    break
                if path == "/reset":  # an RST, not a FIN: SO_LINGER 0
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    break
                if path in ("/close", "/once", "/http10", "/gzip"):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
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
    with pytest.raises(ValueError, match="not an absolute http"):
        Connection("ftp://example.com/", timeout=1)


async def test_interim_answers_are_skipped_and_the_connection_stays_in_step(server: Server) -> None:
    conn = Connection(f"http://127.0.0.1:{server.port}/interim", timeout=2)
    for _ in range(3):  # a leftover final answer would be read as the next POST's
        assert await conn.post(b"x", {}) == Answer(202, b"ok")
    assert server.connections == 1
    conn.close()
    with pytest.raises(PushFailed, match="101"):
        await Connection(f"http://127.0.0.1:{server.port}/switch", timeout=2).post(b"x", {})


async def test_no_content_trailers_and_framing_conflicts(server: Server) -> None:
    for path, body, connections in [("/empty", b"", 1), ("/trailers", b"ok", 1), ("/both", b"ok", 2)]:
        before = server.connections
        conn = Connection(f"http://127.0.0.1:{server.port}{path}", timeout=2)
        for _ in range(2):
            answer = await conn.post(b"x", {})
            assert (answer.status, answer.body) == (204 if path == "/empty" else 202, body)
        assert server.connections - before == connections  # Transfer-Encoding and Content-Length: closed
        conn.close()
    gzip = Connection(f"http://127.0.0.1:{server.port}/gzip", timeout=2)
    assert (await gzip.post(b"x", {})).body == b"to the close"  # not chunked last: delimited by the close


@pytest.mark.parametrize("path", ["/status4", "/status-space", "/lengths", "/fold", "/crlf"])
async def test_malformed_answers_fail_as_push_failed(server: Server, path: str) -> None:
    with pytest.raises(PushFailed):
        await Connection(f"http://127.0.0.1:{server.port}{path}", timeout=2).post(b"x", {})


@pytest.mark.parametrize("path", ["/huge-chunk", "/huge-close", "/huge-length"])
async def test_an_endless_answer_is_cut_short_not_buffered(server: Server, path: str) -> None:
    # The receiver sends far more than MAX_ANSWER and then stalls: the status is read, MAX_BODY of the body
    # kept, the connection closed; not held until the timeout while buffering what it declared.
    conn = Connection(f"http://127.0.0.1:{server.port}{path}", timeout=5)
    answer = await conn.post(b"x", {})
    assert (answer.status, len(answer.body)) == (202, MAX_BODY)
    assert set(answer.body) == {ord("x")}
    assert (await conn.post(b"x", {})).status == 202
    assert server.connections == 2  # the first connection was not kept
    conn.close()


async def test_a_cancelled_post_leaves_a_connection_that_works(server: Server) -> None:
    conn = Connection(f"http://127.0.0.1:{server.port}/hang", timeout=5)
    task = asyncio.create_task(conn.post(b"x", {}))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    conn._end = Connection(f"http://127.0.0.1:{server.port}/length", timeout=5)._end
    assert (await conn.post(b"x", {})).status == 400
    assert server.connections == 2
    conn.close()


async def test_the_target_is_percent_encoded(server: Server) -> None:
    conn = Connection(f"http://127.0.0.1:{server.port}/a b/\u20ac%41?q=\u00fc v", timeout=2)
    assert (await conn.post(b"x", {})).status == 202
    assert server.requests[0].startswith(b"POST /a%20b/%E2%82%AC%41?q=%C3%BC%20v HTTP/1.1\r\n")
    conn.close()


def test_every_tls_stream_shares_one_context() -> None:
    first = Connection("https://a.example/x", timeout=1)
    assert first._tls_context is not None
    assert first._tls_context is Connection("https://b.example:8443/y", timeout=1)._tls_context


async def _reset_idle_connection_is_replaced() -> None:
    state = Server()
    listener = await asyncio.start_server(state.handle, "127.0.0.1", 0)
    state.port = listener.sockets[0].getsockname()[1]
    async with listener:
        conn = Connection(f"http://127.0.0.1:{state.port}/reset", timeout=2)
        for _ in range(3):
            assert (await conn.post(b"x", {})).status == 202
            await asyncio.sleep(0.05)  # reset by the server by now
        conn.close()
        assert state.connections == 3


async def test_a_reset_idle_connection_is_replaced() -> None:
    await _reset_idle_connection_is_replaced()


def test_a_reset_idle_connection_is_replaced_under_uvloop() -> None:
    # Production runs uvloop (uvicorn[standard]), whose transports raise RuntimeError on a write after a
    # reset: the POST still goes out, on a new connection.
    uvloop.run(_reset_idle_connection_is_replaced())


async def test_an_ipv6_literal_is_connected_to_and_named_in_host() -> None:
    state = Server()
    try:
        listener = await asyncio.start_server(state.handle, "::1", 0)
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    state.port = listener.sockets[0].getsockname()[1]
    async with listener:
        conn = Connection(f"http://[::1]:{state.port}/length", timeout=2)
        assert (await conn.post(b"x", {})).status == 400
        conn.close()
    assert f"Host: [::1]:{state.port}\r\n".encode() in state.requests[0]


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A key and a self-signed certificate for localhost (no trust store vouches for it)."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return key, cert


async def test_tls_checks_the_certificate_against_the_trust_store(self_signed: tuple[Path, Path]) -> None:
    # A receiver whose certificate the system trust store does not vouch for is refused (no SET is sent
    # to it); the handshake names the host (SNI).
    names: list[str | None] = []

    def sni(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        names.append(name)

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(self_signed[1], self_signed[0])
    context.sni_callback = sni
    state = Server()
    listener = await asyncio.start_server(state.handle, "127.0.0.1", 0, ssl=context)
    port = listener.sockets[0].getsockname()[1]
    async with listener:
        with pytest.raises(PushFailed, match="CERTIFICATE_VERIFY_FAILED"):
            await Connection(f"https://localhost:{port}/length", timeout=2).post(b"x", {})
    assert names == ["localhost"]
    assert state.requests == []
