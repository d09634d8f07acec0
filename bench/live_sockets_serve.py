"""The baseline of bench/live_sockets.py's memory figure: the sample's ticking WebSocket without tokenlife.

`app` has the sample's `/v1/ticks` route as FastAPI serves it (accept, a JSON tick, then one every `interval`
seconds), reading no token and watching nothing, and a `/readyz` for bench/stack.py's `ready()`. Served by
`python -m uvicorn bench.live_sockets_serve:app`, with the log level and access log of `tokenlife resource
serve`, so that the difference per open socket is what tokenlife adds: the check, the watch, the child task.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import FastAPI, WebSocket
from starlette.websockets import WebSocketDisconnect

app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)


@app.websocket("/v1/ticks")
async def ticks(websocket: WebSocket, interval: float = 1.0) -> None:
    """Tick until the client leaves."""
    await websocket.accept()
    n = 0
    try:
        while True:
            n += 1
            await websocket.send_json({"tick": n, "at": time.time()})
            await asyncio.sleep(interval)
    except WebSocketDisconnect:
        return


@app.get("/readyz")
async def readyz() -> dict[str, str]:
    """Ready as soon as it answers."""
    return {"status": "ok"}
