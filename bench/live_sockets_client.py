"""The open WebSockets of bench/live_sockets.py, held by a process of their own (several share the count).

`python -m bench.live_sockets_client WS_URL COUNT` reads the bearer tokens (JSON list) from its first stdin
line, opens COUNT WebSockets to WS_URL spread over them (the token in the Authorization header, up to
CONCURRENCY handshakes at a time), waits for each one's first message, and prints one JSON line:
{"opened": n, "failed": k, "error": "..."}. Then it keeps them open and answers each stdin line:
"closes" -> {"closed": n, "codes": {"1008 token revoked": n, ...}} (sockets the server closed so far);
"exit" (or the end of stdin) closes its sockets and exits. No ping from this side: the server's own pings
are answered by the library. `Holders` is the other end: it starts such processes, shares the count out
among them, and asks them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

CONCURRENCY = 64
OPEN_TIMEOUT = 30.0
PER_HOLDER = 2500  # sockets a process holds


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


class BenchFailed(Exception):
    """A sample could not be taken (an unexpected answer or close, or nothing within GIVE_UP)."""


def vm_rss(pid: int) -> int:
    """The process's resident memory, bytes (VmRSS of /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchFailed(f"no VmRSS for process {pid}")


@dataclass
class Holders:
    """The client processes holding the sockets."""

    procs: list[asyncio.subprocess.Process] = field(default_factory=list)

    async def start(self, url: str, count: int, tokens: list[str]) -> tuple[int, int, str]:
        """Open `count` sockets over the processes; how many opened, failed, and the commonest failures."""
        shares = [PER_HOLDER] * (count // PER_HOLDER) + ([count % PER_HOLDER] if count % PER_HOLDER else [])
        for share in shares:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.live_sockets_client",
                url,
                str(share),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            self.procs.append(proc)
            assert proc.stdin is not None
            proc.stdin.write((json.dumps(tokens) + "\n").encode())
        answers = [await self._line(proc, 120.0) for proc in self.procs]
        opened = sum(int(a["opened"]) for a in answers)
        errors = ", ".join(str(a["error"]) for a in answers if a["error"])
        return opened, sum(int(a["failed"]) for a in answers), errors

    async def closes(self) -> dict[str, int]:
        """How the server closed any of the held sockets so far, by code and reason."""
        codes: dict[str, int] = {}
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(b"closes\n")
            for code, n in dict((await self._line(proc, 10.0))["codes"]).items():
                codes[code] = codes.get(code, 0) + n
        return codes

    async def _line(self, proc: asyncio.subprocess.Process, within: float) -> dict[str, Any]:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), within)
        if not line:
            raise BenchFailed(f"a client process exited ({await proc.wait()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def stop(self) -> None:
        """Tell every process to close its sockets and exit; kill what does not."""
        for proc in self.procs:
            if proc.stdin is not None and proc.returncode is None:
                with contextlib.suppress(ConnectionError):
                    proc.stdin.write(b"exit\n")
                    await proc.stdin.drain()
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def main() -> None:
    """Run one holder process."""
    raise_fd_limit()
    asyncio.run(hold(sys.argv[1], int(sys.argv[2])))


if __name__ == "__main__":
    main()
