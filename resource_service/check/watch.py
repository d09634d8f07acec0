"""Open connections watched for the end of their token: revoked, expired, or no longer provably fresh. Pure.

A WebSocket or an event stream is authenticated once, at its start; the promise "a revoked token is refused
within B" must still hold while it stays open. The revocation state tells this index about every revocation it
folds in (`RevocationState.apply` -> `revoked`), and the index ends the connections it covers:

- by jti, session and user: a dict lookup each, so one applied event costs O(1) however many connections are
  open (a user watermark then looks at that user's connections only);
- by key and the global watermark: a scan of every connection. Key revocations are rare (a leaked signing
  key), so they are not worth a fourth map on every connection;
- a snapshot swapped into the state (a reconnect's catch-up) may carry any revocation: every connection is
  checked against the new state (`state_replaced`), once per snapshot.

Expiry and staleness are time, not events: the web layer asks `expire(now)` and `end_all(STALE)`
(web/live.py).
Ending a connection here only calls its `on_end` callback (the web layer's: wake the task that closes it);
the callback must not block or raise, and one that raises is counted and ignored, because the state is in the
middle of folding an event when it calls.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from enum import StrEnum

from auth_service.contract import RevocationKind
from resource_service.check.entries import Key, subject_text
from resource_service.check.state import RevocationReason, RevocationState, TokenFacts

__all__ = ["EndReason", "Watch", "WatchIndex"]


class EndReason(StrEnum):
    """Why a watched connection ends; the value is the reason a client reads (WebSocket close, SSE `end`)."""

    REVOKED = "token revoked"  # do not retry with this token: sign in again
    EXPIRED = "token expired"  # refresh the token and reconnect
    STALE = "revocation state stale"  # this instance cannot vouch for any token now: retry shortly


OnEnd = Callable[[EndReason, str], None]


class Watch:
    """One watched connection: its token's facts, when the token dies (wall clock), and whom to tell."""

    __slots__ = ("dead_at", "ended", "facts", "on_end")

    def __init__(self, facts: TokenFacts, dead_at: float, on_end: OnEnd) -> None:
        self.facts = facts
        self.dead_at = dead_at
        self.on_end = on_end
        self.ended = False

    def __repr__(self) -> str:
        return f"Watch({self.facts!r}, dead_at={self.dead_at}, ended={self.ended})"


def _add(index: dict[Key, set[Watch]], key: Key, watch: Watch) -> None:
    found = index.get(key)
    if found is None:
        index[key] = {watch}
    else:
        found.add(watch)


def _discard(index: dict[Key, set[Watch]], key: Key, watch: Watch) -> None:
    found = index.get(key)
    if found is not None:
        found.discard(watch)
        if not found:
            del index[key]


class WatchIndex:
    """The open connections of one instance by jti, session and user; told of revocations by the state."""

    __slots__ = (
        "_by_jti",
        "_by_sid",
        "_by_sub",
        "_count",
        "_expiry",
        "_maps",
        "_order",
        "_state",
        "callback_errors",
    )

    def __init__(self, state: RevocationState) -> None:
        self._state = state
        self._by_jti: dict[Key, set[Watch]] = {}
        self._by_sid: dict[Key, set[Watch]] = {}
        self._by_sub: dict[Key, set[Watch]] = {}
        self._maps = {
            RevocationKind.JTI: self._by_jti,
            RevocationKind.SESSION: self._by_sid,
            RevocationKind.USER: self._by_sub,
        }
        # (dead_at, order, watch), earliest first; a removed watch stays until popped (lazy deletion).
        self._expiry: list[tuple[float, int, Watch]] = []
        self._order = itertools.count()
        self._count = 0
        self.callback_errors = 0
        state.listener = self

    def __len__(self) -> int:
        return self._count

    def add(self, facts: TokenFacts, dead_at: float, on_end: OnEnd) -> Watch | RevocationReason:
        """Watch a connection; a token already revoked is not watched and its reason is returned instead.

        The check and the registration happen together, with nothing awaited between them: a revocation
        applied after the connection's own check and before this call is caught here.
        """
        reason = self._state.is_revoked(facts)
        if reason is not None:
            return reason
        watch = Watch(facts, dead_at, on_end)
        _add(self._by_jti, facts.jti_key, watch)
        _add(self._by_sid, facts.sid_key, watch)
        _add(self._by_sub, facts.sub_key, watch)
        heapq.heappush(self._expiry, (dead_at, next(self._order), watch))
        self._count += 1
        return watch

    def remove(self, watch: Watch) -> None:
        """Stop watching a connection (it closed on its own); removing twice is harmless."""
        if watch.ended:
            return
        watch.ended = True
        self._unindex(watch)
        # Removed watches wait in the heap until their expiry; when they outnumber the live ones, rebuild it
        # so that connection churn cannot grow it beyond twice the open connections.
        if len(self._expiry) > 64 and len(self._expiry) > 2 * len(self):
            self._expiry = [item for item in self._expiry if not item[2].ended]
            heapq.heapify(self._expiry)

    def _unindex(self, watch: Watch) -> None:
        self._count -= 1
        facts = watch.facts
        _discard(self._by_jti, facts.jti_key, watch)
        _discard(self._by_sid, facts.sid_key, watch)
        _discard(self._by_sub, facts.sub_key, watch)

    def _end(self, watch: Watch, reason: EndReason, detail: str) -> None:
        if watch.ended:
            return
        watch.ended = True
        self._unindex(watch)
        try:
            watch.on_end(reason, detail)
        except Exception:  # the state is mid-fold: a broken callback must not stop it
            self.callback_errors += 1

    def revoked(self, kind: RevocationKind, key: Key, not_before: float | None) -> int:
        """The state folded in a new or widened revocation: end the connections it covers; how many."""
        by = self._maps.get(kind)
        if by is not None:
            found = by.get(key)
            if found is None:
                return 0  # the common case: nobody watches what this event revokes
            if kind is RevocationKind.USER:
                assert not_before is not None
                hit = [w for w in found if w.facts.iat < not_before]
            else:
                hit = list(found)
        elif kind is RevocationKind.KEY:
            kid = subject_text(key)
            hit = [w for w in self._all() if w.facts.kid == kid]
        else:
            assert not_before is not None
            hit = [w for w in self._all() if w.facts.iat < not_before]
        detail = _DETAIL[kind]
        for watch in hit:
            self._end(watch, EndReason.REVOKED, detail)
        return len(hit)

    def state_replaced(self) -> int:
        """The state's tables were replaced (a snapshot): end every connection it now revokes; how many."""
        is_revoked = self._state.is_revoked
        hit = [(w, reason) for w in self._all() if (reason := is_revoked(w.facts)) is not None]
        for watch, reason in hit:
            self._end(watch, EndReason.REVOKED, reason.value)
        return len(hit)

    def next_expiry(self) -> float | None:
        """The earliest wall-clock time a watched token dies, or None when nothing is watched."""
        expiry = self._expiry
        while expiry and expiry[0][2].ended:
            heapq.heappop(expiry)
        return expiry[0][0] if expiry else None

    def expire(self, now: float) -> int:
        """End the connections whose token is dead at `now` (seconds since the epoch); how many."""
        ended = 0
        expiry = self._expiry
        while expiry and (expiry[0][2].ended or expiry[0][0] <= now):
            _, _, watch = heapq.heappop(expiry)
            if not watch.ended:
                self._end(watch, EndReason.EXPIRED, "token_expired")
                ended += 1
        return ended

    def end_all(self, reason: EndReason, detail: str) -> int:
        """End every watched connection (the instance went stale, or it is shutting down); how many."""
        hit = list(self._all())
        for watch in hit:
            self._end(watch, reason, detail)
        self._expiry.clear()
        return len(hit)

    def _all(self) -> list[Watch]:
        # Every watch is in exactly one session's set.
        return [watch for watches in self._by_sid.values() for watch in watches]


_DETAIL = {
    RevocationKind.JTI: RevocationReason.TOKEN.value,
    RevocationKind.SESSION: RevocationReason.SESSION.value,
    RevocationKind.USER: RevocationReason.USER.value,
    RevocationKind.KEY: RevocationReason.KEY.value,
    RevocationKind.GLOBAL: RevocationReason.GLOBAL.value,
}
