"""How sure an instance is that its revocation state is at the head of the log. Pure: times are passed in.

Evidence of being at the head comes from two places: a relay heartbeat whose head was already applied (as
of when the heartbeat was sent), or an HTTP read of the log that found nothing newer (as of `read_as_of`).
Staleness is the time since the latest such evidence.

A stall of the event loop longer than the bound (GC, SIGSTOP, CPU starvation) raises a barrier at the moment
it is noticed: evidence as of earlier no longer counts, so after the stall the instance refuses until a head
confirmed after it has been applied. Without the barrier, answers queued during the stall could be written
from the state of before it, on evidence that merely looks recent.
"""

from __future__ import annotations

import math

from resource_service.check.guard import Freshness

__all__ = ["FreshnessTracker", "loop_lag", "read_as_of"]


def read_as_of(sent: float, received: float, held: float | None) -> float:
    """When an answer of the events API that found nothing newer proves we were at the head (monotonic).

    The server's last read of the log happened after it received our request, which was after we sent it,
    and at least `held` seconds after it received it (the server measures `held` before that read starts).
    So the read happened at or after `sent + held` on our clock, and before `received`. Claiming
    `sent + held` is therefore never later than the truth, whatever the network did; `received` caps it in
    case a server reports more than the time that passed. The server's wall clock (`server_time`) is not
    used: it is another machine's clock, and only durations can be carried across.

    Why not `sent` alone: a long-poll held 25 s would then prove freshness as of 25 s ago and a waiting
    instance would go stale while nothing is wrong. Why not `received`: the read may have happened long
    before the answer arrived (a slow link, a paused process), which would overstate freshness.
    The only error left is the servers' and our monotonic clocks' rate difference over `held` (parts per
    million of at most 30 s). The feed also keeps each hold under max_staleness / 2, so that the evidence
    from one answer covers the wait for the next.
    """
    return min(received, sent + max(0.0, held or 0.0))


def loop_lag(previous: float, now: float, interval: float) -> float:
    """How late a tick that slept `interval` seconds after `previous` woke at `now` (the loop's stall)."""
    return max(0.0, now - previous - interval)


class FreshnessTracker:
    """Records evidence of being at the head, and of heartbeats, and judges freshness from them."""

    def __init__(self, max_staleness: float, heartbeat_interval: float, started_at: float) -> None:
        self.max_staleness = max_staleness
        self.heartbeat_interval = heartbeat_interval
        self.caught_up = False  # reached the head of the log at least once: ready from then on
        self._started_at = started_at
        self._fresh_at: float | None = None
        self._heartbeat_at: float | None = None
        self._barrier = -math.inf  # evidence as of before this (a loop stall's end) does not count
        self.stalls = 0
        # Monotonic time from which the state stops counting as fresh (the last evidence no stall voided, plus
        # max_staleness): the Guard's warm path compares the clock with it instead of asking freshness() on
        # every request. Kept equal to what freshness() says: fresh exactly while now < fresh_until.
        self.fresh_until = -math.inf

    def restart(self, now: float) -> None:
        """Count heartbeat silence from now (the feed just started)."""
        self._started_at = now

    def at_head(self, as_of: float) -> None:
        """Evidence that the state was at the head at monotonic time `as_of`."""
        self.caught_up = True
        if self._fresh_at is None or as_of > self._fresh_at:
            self._fresh_at = as_of
            if as_of >= self._barrier:
                self.fresh_until = as_of + self.max_staleness

    def heartbeat(self, received: float, age: float) -> float:
        """A heartbeat arrived at `received`, sent `age` seconds before; returns when it was sent."""
        sent = received - max(0.0, age)  # a sender clock ahead of ours counts as no delay
        self._heartbeat_at = sent if self._heartbeat_at is None else max(self._heartbeat_at, sent)
        return sent

    def heartbeats_silent(self, now: float) -> bool:
        """No heartbeat (sent) within two intervals: time to read the log over HTTP instead."""
        last = self._heartbeat_at if self._heartbeat_at is not None else self._started_at
        return now - last > 2 * self.heartbeat_interval

    def loop_stalled(self, lag: float, noticed: float) -> bool:
        """The loop stalled `lag` seconds, noticed at `noticed`; past the bound, older evidence is void."""
        if lag <= self.max_staleness:
            return False
        # `noticed` is at or after the stall's true end: requiring evidence from then on is the safe side.
        self._barrier = max(self._barrier, noticed)
        self.stalls += 1
        if self._fresh_at is None or self._fresh_at < self._barrier:
            self.fresh_until = -math.inf
        return True

    def staleness(self, now: float) -> float:
        """Seconds since the last evidence of being at the head (infinite before any)."""
        return math.inf if self._fresh_at is None else max(0.0, now - self._fresh_at)

    def freshness(self, now: float) -> Freshness:
        """Fresh under max_staleness after evidence no stall voided; "unsynced" before catching up."""
        if not self.caught_up:
            return "unsynced"
        fresh_at = self._fresh_at
        if fresh_at is None or fresh_at < self._barrier or now - fresh_at >= self.max_staleness:
            return "stale"
        return "fresh"
