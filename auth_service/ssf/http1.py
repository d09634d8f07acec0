"""One push stream's HTTP/1.1 connection to its receiver: a POST at a time on one keep-alive connection.

Why not httpx (which the service uses elsewhere): a push is on the critical path of every SET, once per
stream, on the leader's one event loop, and httpx + httpcore spend ~0.8 ms of CPU per POST there (its
connection pool, its anyio locks, and an `import sniffio` tried on every request when that package is
absent), ~15 times what writing the request and reading the answer on an asyncio stream costs. A stream
sends one SET at a time in log order, so it needs exactly one connection, never a pool.

What it speaks: HTTP/1.1 over TCP or TLS (the default certificate checks), `Content-Length`, chunked and
close-delimited answers, `Connection: close`; no redirects (a push endpoint that moves is a misconfiguration,
RFC 8935 has none), no proxies. Any failure closes the connection; a POST on a kept-alive connection that the
receiver had closed meanwhile is sent once more on a new one (the receiver deduplicates by jti).
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 1024  # what is kept of an answer's body (for the log); the rest is read and dropped


class PushFailed(Exception):
    """The exchange failed (connect, TLS, write, timeout, a malformed answer): try again later."""


@dataclass(frozen=True)
class Answer:
    """The receiver's answer: its status and (up to MAX_BODY of) its body."""

    status: int
    body: bytes


class Connection:
    """POSTs to one URL on one kept-alive connection, opened on first use and after any failure."""

    def __init__(self, url: str, *, timeout: float) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self._host = parts.hostname
        self._tls = parts.scheme == "https"
        self._port = parts.port or (443 if self._tls else 80)
        default_port = self._port == (443 if self._tls else 80)
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._authority = host if default_port else f"{host}:{self._port}"
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._timeout = timeout
        self._tls_context = ssl.create_default_context() if self._tls else None  # loads the CAs once
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, body: bytes, headers: dict[str, str]) -> Answer:
        """Send one POST and read its answer, within the timeout; PushFailed otherwise."""
        reused = self._writer is not None
        try:
            async with asyncio.timeout(self._timeout):
                try:
                    return await self._exchange(body, headers)
                except (ConnectionError, asyncio.IncompleteReadError):
                    if not reused:
                        raise
                    self.close()  # the receiver closed the idle connection: once more, on a new one
                    return await self._exchange(body, headers)
        except (OSError, TimeoutError, EOFError, ValueError, asyncio.LimitOverrunError) as exc:
            self.close()
            raise PushFailed(f"{type(exc).__name__}: {exc}") from exc
        except BaseException:
            self.close()  # cancelled mid-exchange: the connection's state is unknown
            raise

    def close(self) -> None:
        """Drop the connection (the next POST opens a new one)."""
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()

    async def _exchange(self, body: bytes, headers: dict[str, str]) -> Answer:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(
                self._host, self._port, ssl=self._tls_context, limit=MAX_HEAD
            )
        assert self._reader is not None
        head = [f"POST {self._target} HTTP/1.1", f"Host: {self._authority}"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        head.append(f"Content-Length: {len(body)}")
        self._writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        await self._writer.drain()
        status, fields = _parse_head(await self._reader.readuntil(b"\r\n\r\n"))
        content, keep = await self._body(self._reader, fields, status)
        if not keep:
            self.close()
        return Answer(status, content)

    async def _body(
        self, reader: asyncio.StreamReader, fields: dict[str, str], status: int
    ) -> tuple[bytes, bool]:
        keep = "close" not in fields.get("connection", "").lower()
        if status in (204, 304) or 100 <= status < 200:
            return b"", keep
        if "chunked" in fields.get("transfer-encoding", "").lower():
            chunks = bytearray()
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
                if size == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                        pass
                    return bytes(chunks[:MAX_BODY]), keep
                data = await reader.readexactly(size + 2)
                if len(chunks) < MAX_BODY:
                    chunks += data[:-2]
        if "content-length" in fields:
            length = int(fields["content-length"])
            if length < 0:
                raise ValueError("negative Content-Length")
            kept = await reader.readexactly(min(length, MAX_BODY))
            left = length - len(kept)
            while left > 0:
                left -= len(await reader.readexactly(min(left, MAX_BODY)))
            return kept, keep
        return (await reader.read())[:MAX_BODY], False  # delimited by the close


def _parse_head(raw: bytes) -> tuple[int, dict[str, str]]:
    lines = raw.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    if not version.startswith("HTTP/1."):
        raise ValueError(f"not an HTTP/1.x answer: {lines[0][:80]!r}")
    status = int(rest[:3])
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            fields[name.strip().lower()] = value.strip()
    if version == "HTTP/1.0" and "keep-alive" not in fields.get("connection", "").lower():
        fields["connection"] = "close"  # HTTP/1.0 closes unless it says otherwise
    return status, fields
