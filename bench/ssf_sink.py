"""A push receiver for the Shared Signals benchmark, in a process of its own (so the load generator never
delays an arrival's timestamp): `python -m bench.ssf_sink PORT OUT`. It answers 202 to every POST, except
under /dead/, where it never answers (a receiver that accepts connections and hangs), and on SIGTERM writes
one JSON line per SET taken to OUT: the path, the wall-clock arrival time and the SET."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import uvicorn

arrivals: list[tuple[str, float, str]] = []


def _write(path: str) -> None:
    lines = [json.dumps({"path": p, "at": at, "set": body}) + "\n" for p, at, body in arrivals]
    Path(path).write_text("".join(lines))


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The receiver: record, answer 202 (or hang under /dead/)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                _write(sys.argv[2])
                await send({"type": "lifespan.shutdown.complete"})
                return
    raw = b""
    while True:
        message = await receive()
        raw += message.get("body", b"")
        if not message.get("more_body"):
            break
    at = time.time()
    if scope["path"].startswith("/dead/"):
        await asyncio.sleep(3600)
    arrivals.append((scope["path"], at, raw.decode()))
    await send({"type": "http.response.start", "status": 202, "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


if __name__ == "__main__":
    uvicorn.run(
        app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", timeout_graceful_shutdown=1
    )
