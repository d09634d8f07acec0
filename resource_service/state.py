"""The revocation state of one resource instance: a pure fold of the event log, with no I/O.

The fold is monotone: every revocation only ever widens (a later expiry, a later not-before), so applying an
event twice changes nothing, and the state at position P equals the fold of the log up to P over the entries
still live. Times are kept as float seconds since the epoch, the unit of a token's `iat` and `exp`.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import NamedTuple

from auth_service.contract import (
    GLOBAL_SUBJECT,
    ContractError,
    Event,
    GlobalRevoked,
    KeyRevoked,
    Revocation,
    RevocationKind,
    RevocationSnapshot,
    SessionRevoked,
    TokenRevoked,
    UnknownEvent,
    UserRevoked,
)

__all__ = ["ApplyResult", "RevocationReason", "RevocationState", "TokenFacts"]


class RevocationReason(StrEnum):
    TOKEN = "token_revoked"
    SESSION = "session_revoked"
    USER = "user_revoked"
    KEY = "key_revoked"
    GLOBAL = "global_revoked"


class ApplyResult(StrEnum):
    CHANGED = "changed"  # a revocation was added or widened
    ADVANCED = "advanced"  # the position moved, nothing else did (issued, started, unknown type, no news)
    DUPLICATE = "duplicate"  # position <= applied: already folded in, ignored
    GAP = "gap"  # prev_position says an earlier event is missing: not applied, fill the gap first


@dataclass(frozen=True, slots=True)
class TokenFacts:
    """The claims of a verified token that revocations can match."""

    jti: str
    sid: str
    sub: str
    iat: int
    exp: int
    kid: str


class _Entry(NamedTuple):
    expires_at: float
    not_before: float | None  # only for user and global watermarks
    position: int  # the last event that touched the entry


def _max_optional(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


class RevocationState:
    """Live revocations (jti, session, user watermark, kid, global watermark) and the applied position."""

    __slots__ = ("_applied", "_global", "_heap", "_jti", "_keys", "_leeway", "_sessions", "_tables", "_users")

    def __init__(self, *, leeway: float = 30.0) -> None:
        self._leeway = leeway
        self._applied = 0
        self._set_tables({kind: {} for kind in RevocationKind})

    def _set_tables(self, tables: dict[RevocationKind, dict[str, _Entry]]) -> None:
        self._tables = tables
        # Direct references: is_revoked runs on every request and should not index a dict to find a dict.
        self._jti = tables[RevocationKind.JTI]
        self._sessions = tables[RevocationKind.SESSION]
        self._users = tables[RevocationKind.USER]
        self._keys = tables[RevocationKind.KEY]
        self._global = tables[RevocationKind.GLOBAL]
        # A min-heap of (expires_at, kind, subject). An entry whose expiry was extended leaves its old item
        # behind; prune skips items that no longer match the entry (lazy deletion), so each call costs
        # O(expired items * log n) and never a scan of everything.
        self._heap: list[tuple[float, RevocationKind, str]] = [
            (entry.expires_at, kind, subject)
            for kind, table in tables.items()
            for subject, entry in table.items()
        ]
        heapq.heapify(self._heap)

    @property
    def applied_position(self) -> int:
        """The position of the last event folded into this state (0 before any)."""
        return self._applied

    def gap_before(self, event: Event | UnknownEvent) -> bool:
        """True when the event is new but its prev_position shows an event between it and the applied one."""
        if event.position is None or event.position <= self._applied:
            return False
        return event.prev_position is not None and event.prev_position != self._applied

    def apply(self, event: Event | UnknownEvent) -> ApplyResult:
        """Fold one logged event in; duplicates are ignored and an event after a gap is refused."""
        position = event.position
        if position is None:
            raise ValueError("only a logged event (with a position) can be applied")
        if position <= self._applied:
            return ApplyResult.DUPLICATE
        # Applying past a gap would move the position over the missing event, which could then never be
        # applied: a revoked token accepted until it expires. The feed fills the gap and retries.
        if self.gap_before(event):
            return ApplyResult.GAP
        changed = self._fold(event, position)
        self._applied = position
        return ApplyResult.CHANGED if changed else ApplyResult.ADVANCED

    def _fold(self, event: Event | UnknownEvent, position: int) -> bool:
        if isinstance(event, TokenRevoked):
            return self._upsert(RevocationKind.JTI, event.jti, event.expires_at, None, position)
        if isinstance(event, SessionRevoked):
            return self._upsert(
                RevocationKind.SESSION, str(event.session_id), event.expires_at, None, position
            )
        if isinstance(event, UserRevoked):
            return self._upsert(
                RevocationKind.USER, event.user_id, event.expires_at, event.not_before, position
            )
        if isinstance(event, KeyRevoked):
            return self._upsert(RevocationKind.KEY, event.kid, event.expires_at, None, position)
        if isinstance(event, GlobalRevoked):
            return self._upsert(
                RevocationKind.GLOBAL, GLOBAL_SUBJECT, event.expires_at, event.not_before, position
            )
        return False

    def _upsert(
        self,
        kind: RevocationKind,
        subject: str,
        expires_at: datetime,
        not_before: datetime | None,
        position: int,
    ) -> bool:
        table = self._tables[kind]
        old = table.get(subject)
        expires = expires_at.timestamp()
        nb = None if not_before is None else not_before.timestamp()
        if old is not None:
            expires = max(old.expires_at, expires)
            nb = _max_optional(old.not_before, nb)
        table[subject] = _Entry(expires, nb, position)
        if old is None or old.expires_at != expires:
            heapq.heappush(self._heap, (expires, kind, subject))
        return old is None or (old.expires_at, old.not_before) != (expires, nb)

    def load_snapshot(self, snapshot: RevocationSnapshot) -> bool:
        """Replace the state with a snapshot's; one older than the applied position is refused (False)."""
        if snapshot.position < self._applied:
            return False
        tables: dict[RevocationKind, dict[str, _Entry]] = {kind: {} for kind in RevocationKind}
        for rev in snapshot.revocations:
            watermark = rev.kind in (RevocationKind.USER, RevocationKind.GLOBAL)
            if watermark and rev.not_before is None:
                raise ContractError(f"snapshot {rev.kind} revocation {rev.subject!r} has no not_before")
            if rev.kind is RevocationKind.GLOBAL and rev.subject != GLOBAL_SUBJECT:
                raise ContractError(f"snapshot global revocation has subject {rev.subject!r}")
            nb = rev.not_before.timestamp() if watermark and rev.not_before is not None else None
            entry = _Entry(rev.expires_at.timestamp(), nb, rev.position)
            old = tables[rev.kind].get(rev.subject)
            if old is not None:
                entry = _Entry(
                    max(old.expires_at, entry.expires_at),
                    _max_optional(old.not_before, nb),
                    max(old.position, entry.position),
                )
            tables[rev.kind][rev.subject] = entry
        self._set_tables(tables)
        self._applied = snapshot.position
        return True

    def is_revoked(self, token: TokenFacts) -> RevocationReason | None:
        """Why the token is revoked, or None; a handful of dict lookups."""
        if token.jti in self._jti:
            return RevocationReason.TOKEN
        if token.sid in self._sessions:
            return RevocationReason.SESSION
        user = self._users.get(token.sub)
        if user is not None and user.not_before is not None and token.iat < user.not_before:
            return RevocationReason.USER
        if token.kid in self._keys:
            return RevocationReason.KEY
        everyone = self._global.get(GLOBAL_SUBJECT)
        if everyone is not None and everyone.not_before is not None and token.iat < everyone.not_before:
            return RevocationReason.GLOBAL
        return None

    def prune(self, now: float) -> int:
        """Drop entries whose expires_at + leeway < now (seconds since the epoch); returns how many."""
        limit = now - self._leeway
        heap = self._heap
        removed = 0
        while heap and heap[0][0] < limit:
            expires_at, kind, subject = heapq.heappop(heap)
            table = self._tables[kind]
            entry = table.get(subject)
            if entry is not None and entry.expires_at == expires_at:
                del table[subject]
                removed += 1
        return removed

    def counts(self) -> dict[str, int]:
        """Live entries by kind ("jti", "session", "user", "key", "global")."""
        return {kind.value: len(table) for kind, table in self._tables.items()}

    def revocations(self) -> list[Revocation]:
        """Every live entry as contract Revocations, sorted by kind and subject (to compare, to debug)."""
        out = []
        for kind, table in self._tables.items():
            for subject, entry in table.items():
                nb = None if entry.not_before is None else datetime.fromtimestamp(entry.not_before, UTC)
                out.append(
                    Revocation(
                        kind=kind,
                        subject=subject,
                        not_before=nb,
                        expires_at=datetime.fromtimestamp(entry.expires_at, UTC),
                        position=entry.position,
                    )
                )
        out.sort(key=lambda r: (r.kind.value, r.subject))
        return out
