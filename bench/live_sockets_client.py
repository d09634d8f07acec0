"""The open WebSockets of bench/live_sockets.py, held by a process of their own (several share the count).

`python -m bench.live_sockets_client WS_URL COUNT` reads the bearer tokens (JSON list) from its first stdin
line, opens COUNT WebSockets to WS_URL spread over them (the token in the Authorization header, up to
CONCURRENCY handshakes at a time), waits for each one's first message, and prints one JSON line:
{"opened": n, "failed": k, "error": "..."}. Then it keeps them open and answers each stdin line:
"closes" -> {"closed": n, "codes": {"1008 token revoked": n, ...}} (sockets the server closed so far);
"exit" (or the end of stdin) closes its sockets and exits. No ping from this side: the server's own pings
are answered by the library.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import sys
from collections import Counter

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

CONCURRENCY = 64
OPEN_TIMEOUT = 30.0


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit (children inherit it); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Held:
    """The sockets this process holds, and how each one the server closed was closed."""

    def __init__(self) -> None:
        self.sockets: list[ClientConnection] = []
        self.closes: Counter[str] = Counter()
        self.readers: list[asyncio.Task[None]] = []
        self.failures: Counter[str] = Counter()

    async def open_one(self, url: str, token: str, gate: asyncio.Semaphore) -> None:
        """Open one socket and read its first message; a failure is counted by its kind."""
        async with gate:
            try:
                ws = await connect(
                    url,
                    additional_headers={"Authorization": f"Bearer {token}"},
                    open_timeout=OPEN_TIMEOUT,
                    ping_interval=None,
                    close_timeout=1,
                )
                await asyncio.wait_for(ws.recv(), OPEN_TIMEOUT)
            except Exception as exc:  # a refused or broken handshake of any kind is reported, not raised
                self.failures[f"{type(exc).__name__}: {exc}"[:120]] += 1
                return
        self.sockets.append(ws)
        self.readers.append(asyncio.create_task(self._read(ws)))

    async def _read(self, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for _ in ws:
                pass
        self.closes[f"{ws.close_code} {ws.close_reason}"] += 1

    async def close_all(self) -> None:
        """Close every socket from this side (readers then see 1000 and are not reported)."""
        await asyncio.gather(*(ws.close() for ws in self.sockets), return_exceptions=True)
        for task in self.readers:
            task.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)


def _say(payload: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


async def hold(url: str, count: int) -> None:
    """Open, report, then answer stdin until told to exit."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    tokens: list[str] = json.loads(await reader.readline())
    held = Held()
    gate = asyncio.Semaphore(CONCURRENCY)
    await asyncio.gather(*(held.open_one(url, tokens[i % len(tokens)], gate) for i in range(count)))
    error = held.failures.most_common(1)[0][0] if held.failures else ""
    _say({"opened": len(held.sockets), "failed": sum(held.failures.values()), "error": error})
    try:
        while (line := (await reader.readline()).decode().strip()) not in ("", "exit"):
            if line == "closes":
                _say({"closed": sum(held.closes.values()), "codes": dict(held.closes)})
    finally:
        await held.close_all()


def main() -> None:
    """Run one holder process."""
    raise_fd_limit()
    asyncio.run(hold(sys.argv[1], int(sys.argv[2])))


if __name__ == "__main__":
    main()
