"""Open connections watched for their token (check/watch.py): what watching costs, in-process.

- memory: bytes the watch index holds per watched connection, at 10,000 (tracemalloc around the adds: the
  Watch, its place in the three maps and the expiry heap; not the socket, its task or its buffers);
- the cost of applying one event (a token.revoked of a token nobody watches, the common case) with 10,000
  watched connections against none, in interleaved rounds: the ratio is what O(1) per event promises;
- a session revocation that ends one of 10,000 watched connections: the apply and the ending together.

Real WebSockets (process memory per open socket, logout -> close received against the request path) are
bench/live_sockets.py's. `python -m bench.live_connections` runs this alone.
"""

from __future__ import annotations

import gc
import statistics
import time
import tracemalloc
import uuid
from datetime import UTC, datetime, timedelta

from auth_service import contract as c
from bench.results import Results
from resource_service.check.state import RevocationState, TokenFacts
from resource_service.check.watch import EndReason, WatchIndex

WATCHED = 10_000
EVENTS = 20_000
ROUNDS = 7
T0 = datetime.now(UTC)


def _facts(i: int) -> TokenFacts:
    iat = int(T0.timestamp())
    return TokenFacts(
        jti=uuid.uuid4().hex, sid=str(uuid.uuid4()), sub=str(uuid.uuid4()), iat=iat, exp=iat + 300, kid="k1"
    )


def _nothing(reason: EndReason, detail: str) -> None:
    return None


def _watched_state(count: int) -> tuple[RevocationState, WatchIndex, list[TokenFacts]]:
    state = RevocationState()
    index = WatchIndex(state)
    facts = [_facts(i) for i in range(count)]
    dead_at = T0.timestamp() + 300
    for token in facts:
        index.add(token, dead_at, _nothing)
    return state, index, facts


def bytes_per_watch(count: int = WATCHED) -> float:
    """tracemalloc around adding `count` watches to an index."""
    facts = [_facts(i) for i in range(count)]
    state = RevocationState()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    index = WatchIndex(state)
    dead_at = T0.timestamp() + 300
    for token in facts:
        index.add(token, dead_at, _nothing)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(index) == count
    return (after - before) / count


def _revocations(start: int, count: int) -> list[c.Event]:
    expires = T0 + timedelta(seconds=300)
    return [
        c.TokenRevoked(
            jti=uuid.uuid4().hex,
            expires_at=expires,
            reason="revoke",
            position=start + i,
            prev_position=start + i - 1,
        )
        for i in range(count)
    ]


def _apply_us(state: RevocationState, events: list[c.Event]) -> float:
    apply = state.apply
    started = time.perf_counter_ns()
    for event in events:
        apply(event)
    return (time.perf_counter_ns() - started) / len(events) / 1000


def apply_costs(
    watched: int = WATCHED, events: int = EVENTS, rounds: int = ROUNDS
) -> tuple[list[float], list[float]]:
    """Microseconds per applied event, per round, without and with `watched` connections (interleaved)."""
    bare = RevocationState()
    with_watches, _, _ = _watched_state(watched)
    without: list[float] = []
    with_: list[float] = []
    position = 1
    for _ in range(rounds):
        batch = _revocations(position, events)
        without.append(_apply_us(bare, batch))
        with_.append(_apply_us(with_watches, batch))
        position += events
    return without, with_


def ending_one_us(watched: int = WATCHED, samples: int = 2000) -> list[float]:
    """Microseconds to apply a session revocation that ends one of `watched` connections."""
    state, index, facts = _watched_state(watched)
    ended: list[float] = []
    expires = T0 + timedelta(seconds=300)
    for i, token in enumerate(facts[:samples]):
        event = c.SessionRevoked(
            session_id=uuid.UUID(token.sid),
            user_id=token.sub,
            expires_at=expires,
            reason="logout",
            position=i + 1,
            prev_position=i,
        )
        started = time.perf_counter_ns()
        state.apply(event)
        ended.append((time.perf_counter_ns() - started) / 1000)
    assert len(index) == watched - samples
    return ended


def run(results: Results) -> None:
    """Add the rows and targets of the watch index."""
    per_watch = bytes_per_watch()
    results.row(
        f"watch index memory per watched connection ({WATCHED:,})",
        value=per_watch,
        unit="B",
        note="tracemalloc around WatchIndex.add: the Watch, three maps, the expiry heap (not the socket)",
    )
    without, with_ = apply_costs()
    ratio = statistics.median(w / b for w, b in zip(with_, without, strict=True))
    results.row(
        "apply one token.revoked, no watched connection", without, note=f"{ROUNDS} rounds of {EVENTS:,}"
    )
    results.row(
        f"apply one token.revoked, {WATCHED:,} watched connections", with_, note="none of them covered by it"
    )
    results.row(
        f"apply a session.revoked that ends 1 of {WATCHED:,} watched connections",
        ending_one_us(),
        note="the fold, the index lookups and the connection's callback",
    )
    results.target(
        f"apply one event with {WATCHED:,} watched connections / without",
        ratio,
        "x",
        "<= 1.25x",
        ratio <= 1.25,
        why="median of the rounds' ratios; O(1) per event: a dict lookup by jti, session or user",
    )


def main() -> None:
    """Run this module alone and print its rows."""
    results = Results()
    run(results)
    results.print()


if __name__ == "__main__":
    main()
