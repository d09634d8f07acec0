"""The fault suite's load, probes and ledger, and the checks every scenario ends with.

The ledger holds, on this process's monotonic clock: every logout's 2xx time and the tokens it revoked; per
resource instance, the send time of every probe, its token and its answer; the applied position read from
each instance's /readyz. The checks are the promise itself: no 200 for a revoked token on a probe sent later
than the bound after the logout's 2xx, no 500 anywhere, applied positions never going back within one
incarnation of a process, and at the end no revocation missing from any instance.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from dataclasses import dataclass, field

import httpx

from tests.conftest import PASSWORD
from tests.fault.stack import BOUND, Process, Stack

SCOPES = ("session", "others", "all")


@dataclass(frozen=True)
class Probe:
    instance: str
    token: str
    sent: float
    status: int  # -1: no answer (the process is paused or dead)


@dataclass
class Summary:
    scenario: str
    logouts: int
    probes: int
    worst_delay: float  # the longest a revoked token was still accepted after its logout's 2xx (s)
    violations: list[str]
    late: int = 0  # revoked tokens that got a 200 on a probe sent later than the bound after the logout
    lost: int = 0  # revocations (committed: their logout answered 2xx) missing from an instance at the end


# Every scenario's summary, in the order they ran; tests/fault/conftest.py prints them at the end.
SUMMARIES: list[Summary] = []
# Figures a scenario measured (not asserted: timings belong in benchmarks), printed after the table.
NOTES: list[str] = []


def table() -> list[str]:
    """The summary table's lines."""
    lines = [f"{'scenario':<42} {'logouts':>8} {'probes':>8} {'worst delay (s)':>16} {'violations':>11}"]
    for s in SUMMARIES:
        lines.append(
            f"{s.scenario:<42} {s.logouts:>8} {s.probes:>8} {s.worst_delay:>16.3f} {len(s.violations):>11}"
        )
    return lines


@dataclass
class Ledger:
    revoked: dict[str, float] = field(default_factory=dict)  # token -> its logout's 2xx time
    live: list[str] = field(default_factory=list)
    logouts: list[float] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)
    five_hundreds: list[str] = field(default_factory=list)
    positions: dict[tuple[str, int], list[int]] = field(default_factory=dict)

    def revoke(self, tokens: list[str], at: float) -> None:
        """The logout answered 2xx at `at`: these tokens are revoked from then on."""
        self.logouts.append(at)
        for token in tokens:
            self.revoked.setdefault(token, at)
            if token in self.live:
                self.live.remove(token)

    def summarize(self, scenario: str, since: float) -> Summary:
        """The checks over what happened since `since`."""
        violations: list[str] = []
        late: set[str] = set()
        worst = 0.0
        probes = [p for p in self.probes if p.sent >= since]
        for probe in probes:
            at = self.revoked.get(probe.token)
            if at is None or probe.status != 200 or probe.sent < at:
                continue
            worst = max(worst, probe.sent - at)
            if probe.sent > at + BOUND:
                late.add(probe.token)
                violations.append(f"{probe.instance}: 200 for a token revoked {probe.sent - at:.2f} s before")
        violations += self.five_hundreds
        self.five_hundreds.clear()
        for (instance, incarnation), seen in self.positions.items():
            if any(b < a for a, b in itertools.pairwise(seen)):
                violations.append(f"{instance} (start {incarnation}): applied position went back: {seen}")
        logouts = sum(t >= since for t in self.logouts)
        return Summary(scenario, logouts, len(probes), worst, violations, late=len(late))


class Load:
    """Logins, refreshes and logouts of every scope by a few users, straight to the auth processes."""

    def __init__(self, stack: Stack, ledger: Ledger, users: list[str], pause: float = 0.5) -> None:
        self.stack = stack
        self.ledger = ledger
        self.users = users
        self.pause = pause
        self._scopes = itertools.cycle(SCOPES)
        self._http = httpx.AsyncClient(timeout=3.0)

    async def _post(self, path: str, **kwargs: object) -> httpx.Response | None:
        # Any auth instance will do: try them in a random order, as a load balancer would.
        for process in random.sample(self.stack.auth, len(self.stack.auth)):
            try:
                response = await self._http.post(f"{process.base}{path}", **kwargs)  # type: ignore[arg-type]
            except httpx.HTTPError:
                continue
            if response.status_code >= 500 and response.status_code != 503:
                self.ledger.five_hundreds.append(f"{process.name} {path}: {response.status_code}")
            if response.status_code != 503:
                return response
        return None

    async def _login(self, email: str) -> dict[str, str] | None:
        form = {"grant_type": "password", "username": email, "password": PASSWORD}
        response = await self._post("/oauth/token", data=form)
        return response.json() if response is not None and response.status_code == 200 else None

    async def _cycle(self, email: str) -> None:
        a, b = await self._login(email), await self._login(email)
        if a is None or b is None:
            return
        refreshed = await self._post(
            "/oauth/token", data={"grant_type": "refresh_token", "refresh_token": a["refresh_token"]}
        )
        a_tokens = [a["access_token"]]
        if refreshed is not None and refreshed.status_code == 200:
            a_tokens.append(refreshed.json()["access_token"])
        b_tokens = [b["access_token"]]
        self.ledger.live.extend(a_tokens + b_tokens)
        await asyncio.sleep(self.pause)
        scope = next(self._scopes)
        revoked = {"session": a_tokens, "others": b_tokens, "all": a_tokens + b_tokens}[scope]
        if await self._logout(a_tokens[-1], scope, revoked) and scope != "all":
            await asyncio.sleep(self.pause)
            rest = b_tokens if scope == "session" else a_tokens
            await self._logout(rest[-1], "session", rest)

    async def _logout(self, token: str, scope: str, revoked: list[str]) -> bool:
        response = await self._post(
            "/v1/auth/logout", data={"scope": scope}, headers={"Authorization": f"Bearer {token}"}
        )
        if response is None or response.status_code != 200:
            return False
        self.ledger.revoke(revoked, time.monotonic())
        return True

    async def run(self, email: str) -> None:
        """Cycle for ever (cancelled at the end)."""
        while True:
            try:
                await self._cycle(email)
            except httpx.HTTPError:
                pass
            await asyncio.sleep(self.pause)

    async def aclose(self) -> None:
        await self._http.aclose()


class Prober:
    """Sends recently revoked and live tokens to every resource instance, and reads its applied position."""

    def __init__(self, stack: Stack, ledger: Ledger, every: float = 0.1) -> None:
        self.stack = stack
        self.ledger = ledger
        self.every = every
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(2.0))

    async def _probe(self, process: Process, token: str) -> None:
        sent = time.monotonic()
        try:
            response = await self._http.get(
                f"{process.base}/v1/whoami", headers={"Authorization": f"Bearer {token}"}
            )
            status = response.status_code
        except httpx.HTTPError:
            status = -1
        self.ledger.probes.append(Probe(process.name, token, sent, status))
        if status >= 500 and status != 503:
            self.ledger.five_hundreds.append(f"{process.name} /v1/whoami: {status}")

    async def _position(self, process: Process) -> None:
        try:
            body = (await self._http.get(f"{process.base}/readyz")).json()
        except (httpx.HTTPError, ValueError):
            return
        self.ledger.positions.setdefault((process.name, process.incarnation), []).append(
            int(body["applied_position"])
        )

    async def run_instance(self, process: Process) -> None:
        """Probe one instance for ever: the tokens revoked in the last seconds, one older, one live."""
        while True:
            now = time.monotonic()
            recent = [t for t, at in self.ledger.revoked.items() if now - at < 2 * BOUND + 1]
            tokens = recent[-6:]
            if self.ledger.revoked:
                tokens.append(random.choice(list(self.ledger.revoked)))
            if self.ledger.live:
                tokens.append(self.ledger.live[-1])
            await asyncio.gather(*(self._probe(process, t) for t in tokens), self._position(process))
            await asyncio.sleep(self.every)

    async def every_revocation_refused(self, within: float, since: float | None = None) -> list[str]:
        """After the fault: each instance, once ready, refuses revoked tokens; what it did not.

        With `since`, the tokens revoked from then on and a sample of 50 older ones; without, every one.
        """
        revoked = list(self.ledger.revoked.items())
        tokens = [t for t, at in revoked if since is None or at >= since]
        older = [t for t, at in revoked if since is not None and at < since]
        tokens += random.sample(older, min(50, len(older)))
        limit = asyncio.Semaphore(16)

        async def status(process: Process, token: str) -> int:
            async with limit:
                return await self._final_status(process, token)

        missing: list[str] = []
        for process in self.stack.resource:
            await process.ready(within)
            answers = await asyncio.gather(*(status(process, t) for t in tokens))
            missing += [
                f"{process.name}: a revoked token answered {a} at the end" for a in answers if a != 401
            ]
        return missing

    async def _final_status(self, process: Process, token: str) -> int:
        # A 503 (a moment of staleness) is asked again; a 200 is final: the revocation is missing.
        status = -1
        for _ in range(10):
            try:
                response = await self._http.get(
                    f"{process.base}/v1/whoami", headers={"Authorization": f"Bearer {token}"}
                )
                status = response.status_code
            except httpx.HTTPError:
                status = -1
            if status in (200, 401):
                return status
            await asyncio.sleep(0.5)
        return status

    async def aclose(self) -> None:
        await self._http.aclose()
