"""Judge freshness again when an answer is written, not only when its request was read.

A request read while the state was fresh can be answered much later: a handler that awaits, or an event loop
that was paused (GC, SIGSTOP, CPU starvation) with requests already queued. The promise is about the moment
the answer leaves, so a 2xx start of a request the Guard accepted is checked once more: one monotonic read and
a comparison. If the state went stale meanwhile, the 2xx becomes the Guard's own 503 + Retry-After.

Plain ASGI, framework-free: `AnswerGate` wraps an app whose routes use `require_principal` (the dependency
marks the request with its Guard); `RevocationMiddleware` gates its own sends through `gated_send`.
"""

from __future__ import annotations

import json
from typing import Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from resource_service.errors import StateStale, error_body, error_headers

__all__ = ["GATE_KEY", "GUARD_KEY", "AnswerGate", "Judge", "gated_send"]

# scope["state"] key under which the dependency leaves the Guard that accepted the request.
GUARD_KEY = "tokenlife_guard"
# scope["state"] key the gate sets, so a dependency can tell that its answer will be judged.
GATE_KEY = "tokenlife_gate"


class Judge(Protocol):
    """What the gate asks of the Guard that accepted the request."""

    @property
    def retry_after(self) -> int:
        """Seconds a refused client should wait."""
        ...

    def may_answer(self) -> bool:
        """Whether an accepted request may still be answered with a success now."""
        ...

    def refused_at_answer(self) -> None:
        """Count a success turned into a refusal at answer time."""
        ...


def _refusal(judge: Judge, realm: str) -> tuple[Message, Message]:
    err = StateStale(judge.retry_after, "revocation state went stale before the answer was written")
    body = json.dumps(error_body(err)).encode()
    headers = error_headers(err, realm)
    headers |= {"Content-Type": "application/json", "Content-Length": str(len(body))}
    start: Message = {
        "type": "http.response.start",
        "status": err.status_code,
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
    }
    return start, {"type": "http.response.body", "body": body, "more_body": False}


def gated_send(send: Send, scope: Scope, realm: str, judge: Judge | None = None) -> Send:
    """`send`, but the 2xx start of an accepted request whose Guard may no longer answer is refused."""
    refused = False

    async def gated(message: Message) -> None:
        nonlocal refused
        if refused:
            return  # the handler's own body: the refusal already went out in its place
        if message["type"] == "http.response.start" and 200 <= message["status"] < 300:
            found = judge if judge is not None else scope.get("state", {}).get(GUARD_KEY)
            if found is not None and not found.may_answer():
                refused = True
                found.refused_at_answer()
                for refusal in _refusal(found, realm):
                    await send(refusal)
                return
        await send(message)

    return gated


class AnswerGate:
    """ASGI middleware: a success accepted by `require_principal` is written only while still fresh."""

    def __init__(self, app: ASGIApp, *, realm: str = "tokenlife") -> None:
        self.app = app
        self._realm = realm

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, with its answer's start gated."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})[GATE_KEY] = True
        await self.app(scope, receive, gated_send(send, scope, self._realm))
