"""Open WebSockets under faults: closed within B when their token is revoked, and only those.

On the fault suite's stack (tests/fault/conftest.py: 2 auth and 3 resource processes behind TCP proxies,
under its load and probes), sessions of users of these tests' own each hold a WebSocket to the sample's
ticking feed on every resource instance. During a relay leader's kill -9, and during a broker cut (every
link refused), one session is logged out (scope session) and one user everywhere (scope all), through an
auth process that is up. Each socket of theirs must be closed with 1008 "token revoked" within B of its
logout's 2xx; every other socket must still be open and still ticking once the fault is over. The
scenario's usual checks (tests/fault/ledger.py) hold as well; the table names these scenarios "..., with
WebSockets open", and a note under it gives the latest close after its logout.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import PASSWORD, add_user
from tests.fault.conftest import Suite
from tests.fault.ledger import NOTES
from tests.fault.stack import BOUND, Process, Stack
from tests.fault.test_faults import HOLD, scenario

pytestmark = [pytest.mark.fault, pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

TICK = 0.2  # seconds between two ticks of every socket
OPEN_TIMEOUT = 10.0


@dataclass(eq=False)
class Held:
    """One open socket: whose session it is, on which instance, and what it has seen."""

    session: str
    instance: str
    ws: ClientConnection
    ticks: int = 0
    closed_at: float | None = None  # time.monotonic() when the client had the close
    reader: asyncio.Task[None] | None = None

    async def read(self) -> None:
        """Count ticks until the server closes the socket; stamp when."""
        with contextlib.suppress(ConnectionClosed):
            async for _ in self.ws:
                self.ticks += 1
        self.closed_at = time.monotonic()

    @property
    def close(self) -> tuple[int | None, str | None]:
        """Its close code and reason (None while open)."""
        return self.ws.close_code, self.ws.close_reason


async def _login(auth: Process, email: str) -> str:
    form = {"grant_type": "password", "username": email, "password": PASSWORD}
    async with httpx.AsyncClient(timeout=5.0) as http:
        response = await http.post(f"{auth.base}/oauth/token", data=form)
    response.raise_for_status()
    return str(response.json()["access_token"])


async def _sessions(stack: Stack, tag: str) -> dict[str, str]:
    """Sessions of three new users: a1 and a2 of one, b1 and b2 of another, c1 of a third; their tokens."""
    for user in "abc":
        await add_user(stack.database_url, f"{tag}-{user}@sockets.test")
    names = ("a1", "a2", "b1", "b2", "c1")
    return {name: await _login(stack.auth[0], f"{tag}-{name[0]}@sockets.test") for name in names}


async def _open(stack: Stack, tokens: dict[str, str]) -> list[Held]:
    """One socket per session on every resource instance, each past its first tick."""
    held = []
    for session, token in tokens.items():
        for instance in stack.resource:
            ws = await connect(
                f"ws://127.0.0.1:{instance.port}/v1/ticks?interval={TICK}",
                additional_headers={"Authorization": f"Bearer {token}"},
                open_timeout=OPEN_TIMEOUT,
            )
            await asyncio.wait_for(ws.recv(), OPEN_TIMEOUT)
            socket = Held(session, instance.name, ws)
            socket.reader = asyncio.create_task(socket.read())
            held.append(socket)
    return held


async def _logout(auth: Process, token: str, scope: str) -> float:
    """Log out through `auth`; time.monotonic() at its 2xx."""
    async with httpx.AsyncClient(timeout=5.0) as http:
        response = await http.post(
            f"{auth.base}/v1/auth/logout", data={"scope": scope}, headers={"Authorization": f"Bearer {token}"}
        )
    assert response.status_code == 200, response.text
    return time.monotonic()


async def _logouts(up: Process, tokens: dict[str, str], ended: dict[str, float]) -> None:
    """Session a1 logged out, and user b everywhere (b1 and b2): when each session's token ended."""
    ended["a1"] = await _logout(up, tokens["a1"], "session")
    ended["b1"] = ended["b2"] = await _logout(up, tokens["b1"], "all")


async def _check(name: str, held: list[Held], ended: dict[str, float]) -> None:
    """The logged-out sessions' sockets closed 1008 within B of the 2xx; every other one open and ticking."""
    victims = [s for s in held if s.session in ended]
    keepers = [s for s in held if s.session not in ended]
    assert len(victims) == 3 * len(keepers) / 2 > 0, "every session's sockets: 3 logged out, 2 kept"
    with contextlib.suppress(TimeoutError):  # a socket still open is reported below, with the others
        await asyncio.wait_for(asyncio.gather(*(s.reader for s in victims if s.reader)), 2 * BOUND)
    after = {s: None if s.closed_at is None else s.closed_at - ended[s.session] for s in victims}
    late = {
        f"{s.session}@{s.instance}": (s.close, delay)
        for s, delay in after.items()
        if s.close != (1008, "token revoked") or delay is None or delay > BOUND
    }
    assert late == {}, f"not closed 1008 'token revoked' within B = {BOUND} s of the logout: {late}"
    worst = max(d for d in after.values() if d is not None)
    NOTES.append(f"{name}: {len(victims)} sockets closed 1008, the last {worst:.3f} s after its logout's 2xx")
    counts = {s: s.ticks for s in keepers}
    await asyncio.sleep(3 * TICK)
    wrong = {f"{s.session}@{s.instance}": s.close for s in keepers if s.closed_at is not None}
    assert wrong == {}, f"closed though their token holds: {wrong}"
    silent = [f"{s.session}@{s.instance}" for s in keepers if s.ticks <= counts[s]]
    assert silent == [], f"open but no longer ticking: {silent}"


async def _close(held: list[Held]) -> None:
    await asyncio.gather(*(s.ws.close() for s in held), return_exceptions=True)
    await asyncio.gather(*(s.reader for s in held if s.reader), return_exceptions=True)


async def test_sockets_through_relay_leader_kill(suite: Suite) -> None:
    stack = suite.stack
    tokens = await _sessions(stack, "leader")
    held = await _open(stack, tokens)
    ended: dict[str, float] = {}

    async def fault() -> None:
        leader = await stack.leader()
        assert leader is not None
        leader.kill()
        up = next(p for p in stack.auth if p is not leader)
        await _logouts(up, tokens, ended)  # while the leader is down: the other relay takes over
        await asyncio.sleep(HOLD)
        leader.start()
        await leader.ready()

    try:
        await scenario(suite, name := "relay leader kill -9, with WebSockets open", fault)
        await _check(name, held, ended)
    finally:
        await _close(held)


async def test_sockets_through_broker_cut(suite: Suite) -> None:
    stack = suite.stack
    tokens = await _sessions(stack, "broker")
    held = await _open(stack, tokens)
    ended: dict[str, float] = {}

    async def fault() -> None:
        for proxy in stack.broker_proxies:
            proxy.refuse()
            proxy.cut()
        await asyncio.sleep(BOUND / 2)  # the instances have seen the cut: revocations come by polling
        await _logouts(stack.auth[0], tokens, ended)
        await asyncio.sleep(HOLD)
        for proxy in stack.broker_proxies:
            proxy.heal()

    try:
        await scenario(suite, name := "broker unreachable (every link refused), with WebSockets open", fault)
        await _check(name, held, ended)
    finally:
        await _close(held)
