"""One push stream's HTTP/1.1 connection to its receiver: a POST at a time on one keep-alive connection.

Why not httpx (which the service uses elsewhere): a push is on the critical path of every SET, once per
stream, on the leader's one event loop, and httpx + httpcore spend ~0.8 ms of CPU per POST there (its
connection pool, its anyio locks, and an `import sniffio` tried on every request when that package is
absent), ~15 times what writing the request and reading the answer on an asyncio stream costs. A stream
sends one SET at a time in log order, so it needs exactly one connection, never a pool.

What it speaks: HTTP/1.1 over TCP or TLS (the system trust store and the default certificate and host name
checks, one TLS context for every stream), `Content-Length`, chunked and close-delimited answers,
`Connection: close`, interim 1xx answers skipped; no redirects (a push endpoint that moves is a
misconfiguration, RFC 8935 has none), no proxies, no userinfo. The request target is percent-encoded and
the host IDNA-encoded (`endpoint`, which config.check runs on every endpoint_url a receiver sends). An
answer is parsed strictly (a malformed one fails the POST); what it says beyond MAX_ANSWER bytes is not
read (the connection is closed instead), and MAX_BODY of it is kept, so a receiver cannot make the leader
buffer much. Any failure closes the connection, and any failure is a PushFailed; a POST on a kept-alive
connection that the receiver had closed or reset meanwhile is sent once more on a new one (the receiver
deduplicates by jti).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import ssl
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 1024  # what is kept of an answer's body (for the log); the rest is read and dropped
MAX_ANSWER = 1024 * 1024  # body bytes read at most: past them the connection is closed, not drained
_PIECE = 64 * 1024
_STATUS_LINE = re.compile(r"HTTP/1\.(\d) ([1-9]\d\d)(?: [^\r\n]*)?")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HOST = re.compile(r"[a-z0-9_.-]+")
_SAFE = "/%:@!$&'()*+,;=-._~"  # RFC 3986 pchar and "/", "%" so that an encoded URL stays as it is
# What a kept-alive connection the receiver closed or reset looks like on the next POST (under asyncio's
# own loop or uvloop, which raises RuntimeError writing on a closed transport).
_STALE = (ConnectionError, asyncio.IncompleteReadError, RuntimeError, ssl.SSLError)


class PushFailed(Exception):
    """The exchange failed (connect, TLS, write, timeout, a malformed answer): try again later."""


@dataclass(frozen=True)
class Answer:
    """The receiver's answer: its status and (up to MAX_BODY of) its body."""

    status: int
    body: bytes


@dataclass(frozen=True)
class Endpoint:
    """Where a URL sends: host (IDNA) and port to connect to, TLS or not, Host header, request target."""

    host: str
    port: int
    tls: bool
    authority: str
    target: str


def endpoint(url: str) -> Endpoint:
    """The URL as this client sends to it; ValueError saying why it cannot (config.check shows it)."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # a bracketed host that is no IPv6 address among them
        raise ValueError(f"not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an absolute http(s) URL")
    if "@" in parts.netloc:
        raise ValueError("a URL with user information is not supported")
    if parts.fragment:
        raise ValueError("a URL with a fragment is not supported")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0 or parts.netloc.endswith(":"):
        raise ValueError("the port must be a number from 1 to 65535")
    tls = parts.scheme == "https"
    default = 443 if tls else 80
    port = port or default
    if ":" in parts.hostname:
        try:
            host = str(ipaddress.IPv6Address(parts.hostname))
        except ValueError:
            raise ValueError("not a valid IPv6 address") from None
        shown = f"[{host}]"
    else:
        try:
            host = parts.hostname.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError("not a valid host name") from None
        if not _HOST.fullmatch(host):
            raise ValueError("not a valid host name")
        shown = host
    target = quote(parts.path or "/", safe=_SAFE)
    if parts.query:
        target += "?" + quote(parts.query, safe=_SAFE + "?")
    return Endpoint(host, port, tls, shown if port == default else f"{shown}:{port}", target)


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The one TLS client context of every stream (loading the trust store costs ~17 ms and ~850 KB)."""
    return ssl.create_default_context()


class Connection:
    """POSTs to one URL on one kept-alive connection, opened on first use and after any failure."""

    def __init__(self, url: str, *, timeout: float) -> None:
        self._end = endpoint(url)
        self._timeout = timeout
        self._tls_context = tls_context() if self._end.tls else None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, body: bytes, headers: dict[str, str]) -> Answer:
        """Send one POST and read its answer, within the timeout; PushFailed otherwise."""
        if self._writer is not None and (self._writer.is_closing() or self._at_eof()):
            self.close()  # closed by the receiver while idle: a new connection, not a write that fails
        reused = self._writer is not None
        try:
            async with asyncio.timeout(self._timeout):
                try:
                    return await self._exchange(body, headers)
                except _STALE:
                    if not reused:
                        raise
                    self.close()  # the receiver closed the idle connection: once more, on a new one
                    return await self._exchange(body, headers)
        except Exception as exc:
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

    def _at_eof(self) -> bool:
        return self._reader is None or self._reader.at_eof() or self._reader.exception() is not None

    async def _exchange(self, body: bytes, headers: dict[str, str]) -> Answer:
        end = self._end
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(
                end.host, end.port, ssl=self._tls_context, limit=MAX_HEAD
            )
        assert self._reader is not None
        head = [f"POST {end.target} HTTP/1.1", f"Host: {end.authority}"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        head.append(f"Content-Length: {len(body)}")
        self._writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        await self._writer.drain()
        while True:
            status, fields = _parse_head(await self._reader.readuntil(b"\r\n\r\n"))
            if status == 101:
                raise ValueError("101 Switching Protocols was not asked for")
            if status >= 200:
                break  # 100, 102, 103: interim answers, the final one follows
        content, keep = await _Body(self._reader).read(fields, status)
        if not keep:
            self.close()
        return Answer(status, content)


class _Body:
    """Reads one answer's body in pieces: MAX_BODY of it kept, at most MAX_ANSWER bytes read."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self._kept = bytearray()
        self._read = 0

    async def read(self, fields: dict[str, str], status: int) -> tuple[bytes, bool]:
        """The body kept, and whether the connection can carry the next POST."""
        keep = "close" not in _tokens(fields.get("connection", ""))
        if status in (204, 304):
            return b"", keep
        try:
            if "transfer-encoding" in fields:
                if "content-length" in fields:
                    keep = False  # both: RFC 9112 §6.1, the connection is not reused
                if _tokens(fields["transfer-encoding"])[-1:] != ["chunked"]:
                    return await self._until_close(), False
                await self._chunked()
            elif "content-length" in fields:
                await self._take(_content_length(fields["content-length"]))
            else:
                return await self._until_close(), False
        except _TooLong:
            return bytes(self._kept), False  # the status is known: the rest is not read
        return bytes(self._kept), keep

    def _add(self, data: bytes) -> None:
        self._read += len(data)
        if len(self._kept) < MAX_BODY:
            self._kept += data[: MAX_BODY - len(self._kept)]
        if self._read > MAX_ANSWER:
            raise _TooLong

    async def _take(self, size: int) -> None:
        while size > 0:
            data = await self._reader.readexactly(min(size, _PIECE))
            size -= len(data)
            self._add(data)

    async def _chunked(self) -> None:
        while True:
            line = (await self._reader.readuntil(b"\r\n"))[:-2]
            digits = line.split(b";")[0].strip(b" \t")
            if not re.fullmatch(rb"[0-9A-Fa-f]{1,16}", digits):
                raise ValueError("malformed chunk size")
            size = int(digits, 16)
            if size == 0:
                break
            await self._take(size)
            if await self._reader.readexactly(2) != b"\r\n":
                raise ValueError("chunk data not followed by CRLF")
        while (line := await self._reader.readuntil(b"\r\n")) != b"\r\n":  # trailers, dropped
            self._read += len(line)
            if self._read > MAX_ANSWER:
                raise _TooLong

    async def _until_close(self) -> bytes:
        while data := await self._reader.read(_PIECE):
            self._add(data)
        return bytes(self._kept)


class _TooLong(Exception):
    pass


def _tokens(value: str) -> list[str]:
    return [t.strip(" \t").lower() for t in value.split(",") if t.strip(" \t")]


def _content_length(value: str) -> int:
    values = {v.strip(" \t") for v in value.split(",")}
    if len(values) != 1 or not re.fullmatch(r"\d{1,18}", (only := values.pop())):
        raise ValueError(f"bad Content-Length {value[:40]!r}")
    return int(only)


def _parse_head(raw: bytes) -> tuple[int, dict[str, str]]:
    lines = raw[:-4].decode("latin-1").split("\r\n")
    line = _STATUS_LINE.fullmatch(lines[0])
    if line is None:
        raise ValueError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    fields: dict[str, str] = {}
    for text in lines[1:]:
        name, sep, value = text.partition(":")
        if not sep or not _TOKEN.fullmatch(name):  # obs-fold (a line starting with a space) among them
            raise ValueError(f"malformed header field: {text[:80]!r}")
        name, value = name.lower(), value.strip(" \t")
        fields[name] = f"{fields[name]}, {value}" if name in fields else value  # RFC 9110 §5.3
    if line.group(1) == "0" and "keep-alive" not in _tokens(fields.get("connection", "")):
        fields["connection"] = "close"  # HTTP/1.0 closes unless it says otherwise
    return int(line.group(2)), fields
