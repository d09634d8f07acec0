"""The revocation state of one resource instance: a pure fold of the event log, with no I/O.

The fold is monotone: every revocation only ever widens (a later expiry, a later not-before), so applying an
event twice changes nothing, and the state at position P equals the fold of the log up to P over the entries
still live. Times are kept as float seconds since the epoch, the unit of a token's `iat` and `exp`. Entries
are stored compactly (entries.py): memory per live revocation is the service's memory.

Long because the snapshot loader swaps in the state's private tables and must stay beside the fold it
mirrors, and every change the fold makes is told to a listener (the watch of open connections, watch.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Protocol

from auth_service.contract import (
    GLOBAL_SUBJECT,
    ColumnarSnapshot,
    ContractError,
    Event,
    GlobalRevoked,
    KeyRevoked,
    Revocation,
    RevocationColumns,
    RevocationKind,
    RevocationSnapshot,
    SessionRevoked,
    TokenRevoked,
    UnknownEvent,
    UserRevoked,
)
from resource_service.check.entries import ExpiringTable, Key, subject_key, subject_text

__all__ = [
    "ApplyResult",
    "RevocationListener",
    "RevocationReason",
    "RevocationState",
    "SnapshotLoader",
    "TokenFacts",
]


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


class TokenFacts:
    """The claims of a verified token that revocations can match, with their lookup keys made once."""

    __slots__ = ("exp", "iat", "jti", "jti_key", "kid", "sid", "sid_key", "sub", "sub_key")

    def __init__(self, *, jti: str, sid: str, sub: str, iat: int, exp: int, kid: str) -> None:
        self.jti = jti
        self.sid = sid
        self.sub = sub
        self.iat = iat
        self.exp = exp
        self.kid = kid
        # Made here, once per token (the verifier caches the facts), not on every check.
        self.jti_key = subject_key(jti)
        self.sid_key = subject_key(sid)
        self.sub_key = subject_key(sub)

    def __repr__(self) -> str:
        return f"TokenFacts(jti={self.jti!r}, sid={self.sid!r}, sub={self.sub!r}, iat={self.iat})"


_WATERMARKS = (RevocationKind.USER, RevocationKind.GLOBAL)


class RevocationListener(Protocol):
    """Told of every revocation the state folds in (the watch index of open connections: watch.py)."""

    def revoked(self, kind: RevocationKind, key: Key, not_before: float | None) -> int:
        """A revocation was added or widened; `not_before` is the watermark now held (user and global)."""
        ...

    def state_replaced(self) -> int:
        """The tables were replaced by a snapshot's: any revocation may be new."""
        ...


class RevocationState:
    """Live revocations (jti, session, user watermark, kid, global watermark) and the applied position."""

    __slots__ = (
        "_applied",
        "_global_nb",
        "_jti",
        "_keys",
        "_leeway",
        "_not_before",
        "listener",
        "_sessions",
        "_tables",
        "_user_nb",
    )

    def __init__(self, *, leeway: float = 30.0) -> None:
        self._leeway = leeway
        self._applied = 0
        # Open connections watched for the end of their token (None until a WatchIndex attaches itself).
        self.listener: RevocationListener | None = None
        self._set_tables({kind: ExpiringTable() for kind in RevocationKind}, {k: {} for k in _WATERMARKS})

    def _set_tables(
        self, tables: dict[RevocationKind, ExpiringTable], not_before: dict[RevocationKind, dict[Key, float]]
    ) -> None:
        self._tables = tables
        self._not_before = not_before
        # Direct references to the dicts themselves: is_revoked runs on every request.
        self._jti = tables[RevocationKind.JTI].expiry
        self._sessions = tables[RevocationKind.SESSION].expiry
        self._keys = tables[RevocationKind.KEY].expiry
        self._user_nb = not_before[RevocationKind.USER]
        self._global_nb = not_before[RevocationKind.GLOBAL]

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
            return self._put(RevocationKind.JTI, event.jti, event.expires_at, None, position)
        if isinstance(event, SessionRevoked):
            return self._put(RevocationKind.SESSION, str(event.session_id), event.expires_at, None, position)
        if isinstance(event, UserRevoked):
            return self._put(RevocationKind.USER, event.user_id, event.expires_at, event.not_before, position)
        if isinstance(event, KeyRevoked):
            return self._put(RevocationKind.KEY, event.kid, event.expires_at, None, position)
        if isinstance(event, GlobalRevoked):
            return self._put(
                RevocationKind.GLOBAL, GLOBAL_SUBJECT, event.expires_at, event.not_before, position
            )
        return False

    def _put(
        self,
        kind: RevocationKind,
        subject: str,
        expires_at: datetime,
        not_before: datetime | None,
        position: int,
    ) -> bool:
        key = subject_key(subject)
        changed = self._tables[kind].put(key, expires_at.timestamp(), position)
        watermark = None
        if not_before is not None:
            watermarks = self._not_before[kind]
            changed = _raise_watermark(watermarks, key, not_before.timestamp()) or changed
            watermark = watermarks[key]
        # Only news can end a connection: one already covered by this entry was ended when it came.
        if changed and self.listener is not None:
            self.listener.revoked(kind, key, watermark)
        return changed

    def load_snapshot(self, snapshot: RevocationSnapshot | ColumnarSnapshot) -> bool:
        """Replace the state with a snapshot's; one older than the applied position is refused (False)."""
        loader = SnapshotLoader(self, snapshot.position)
        if loader.refused:
            return False
        if isinstance(snapshot, ColumnarSnapshot):
            for kind, columns in snapshot.columns.items():
                loader.feed_columns(kind, columns)
        else:
            loader.feed_revocations(snapshot.revocations)
        return loader.commit()

    def is_revoked(self, token: TokenFacts) -> RevocationReason | None:
        """Why the token is revoked, or None; a handful of dict lookups."""
        if token.jti_key in self._jti:
            return RevocationReason.TOKEN
        if token.sid_key in self._sessions:
            return RevocationReason.SESSION
        user = self._user_nb.get(token.sub_key)
        if user is not None and token.iat < user:
            return RevocationReason.USER
        if token.kid in self._keys:
            return RevocationReason.KEY
        everyone = self._global_nb.get(GLOBAL_SUBJECT)
        if everyone is not None and token.iat < everyone:
            return RevocationReason.GLOBAL
        return None

    def prune(self, now: float) -> int:
        """Drop entries whose expires_at + leeway < now (seconds since the epoch); returns how many."""
        limit = now - self._leeway
        removed = 0
        for kind, table in self._tables.items():
            gone = table.prune(limit)
            removed += len(gone)
            watermarks = self._not_before.get(kind)
            if watermarks is not None:
                for key in gone:
                    del watermarks[key]
        return removed

    def counts(self) -> dict[str, int]:
        """Live entries by kind ("jti", "session", "user", "key", "global")."""
        return {kind.value: len(table) for kind, table in self._tables.items()}

    def revocations(self) -> list[Revocation]:
        """Every live entry as contract Revocations, sorted by kind and subject (to compare, to debug)."""
        out = []
        for kind, table in self._tables.items():
            watermarks = self._not_before.get(kind, {})
            for key, expires, position in table.entries():
                nb = watermarks.get(key)
                out.append(
                    Revocation(
                        kind=kind,
                        subject=subject_text(key),
                        not_before=None if nb is None else datetime.fromtimestamp(nb, UTC),
                        expires_at=datetime.fromtimestamp(expires, UTC),
                        position=position,
                    )
                )
        out.sort(key=lambda r: (r.kind.value, r.subject))
        return out


def _raise_watermark(watermarks: dict[Key, float], key: Key, not_before: float) -> bool:
    old = watermarks.get(key)
    if old is not None and old >= not_before:
        return False
    watermarks[key] = not_before
    return True


def _check_entry(kind: RevocationKind, subject: str, has_not_before: bool) -> None:
    if kind in _WATERMARKS and not has_not_before:
        raise ContractError(f"snapshot {kind} revocation {subject!r} has no not_before")
    if kind is RevocationKind.GLOBAL and subject != GLOBAL_SUBJECT:
        raise ContractError(f"snapshot global revocation has subject {subject!r}")


class SnapshotLoader:
    """A snapshot folded in parts into tables of its own, then swapped into the state at once by commit().

    Readers keep the state's old tables until the swap, and the applied position moves only then, so a
    snapshot loaded in many steps (with awaits between them) is as atomic to a reader as one loaded at once.
    """

    __slots__ = ("_done", "_not_before", "_position", "_state", "_tables")

    def __init__(self, state: RevocationState, position: int) -> None:
        self._state = state
        self._position = position
        self._tables = {kind: ExpiringTable() for kind in RevocationKind}
        self._not_before: dict[RevocationKind, dict[Key, float]] = {k: {} for k in _WATERMARKS}
        self._done = False

    @property
    def refused(self) -> bool:
        """Whether the state already applied past this snapshot (commit() would refuse it)."""
        return self._position < self._state.applied_position

    def feed_columns(self, kind: RevocationKind, columns: RevocationColumns) -> None:
        """Fold in some revocations of one kind, column by column (a part of a ColumnarSnapshot's columns)."""
        # The bulk path of a cold start: plain lists of str, float and int, folded without an object per row.
        watermarks = self._not_before.get(kind)
        if watermarks is not None and columns.not_before is None:
            raise ContractError(f"snapshot {kind} revocations have no not_before")
        if kind is RevocationKind.GLOBAL and any(s != GLOBAL_SUBJECT for s in columns.subjects):
            raise ContractError("snapshot global revocation has a subject other than '*'")
        put = self._tables[kind].put
        keys = [subject_key(subject) for subject in columns.subjects]
        for key, expires, position in zip(keys, columns.expires_at, columns.positions, strict=True):
            put(key, expires, position)
        if watermarks is not None and columns.not_before is not None:
            for key, nb in zip(keys, columns.not_before, strict=True):
                _raise_watermark(watermarks, key, nb)

    def feed_revocations(self, revocations: Iterable[Revocation]) -> None:
        """Fold in some revocations (a part of a RevocationSnapshot's list)."""
        tables, not_before = self._tables, self._not_before
        for rev in revocations:
            _check_entry(rev.kind, rev.subject, rev.not_before is not None)
            key = subject_key(rev.subject)
            tables[rev.kind].put(key, rev.expires_at.timestamp(), rev.position)
            if rev.kind in not_before and rev.not_before is not None:
                _raise_watermark(not_before[rev.kind], key, rev.not_before.timestamp())

    def commit(self) -> bool:
        """Swap the folded tables in and move to the snapshot's position; False if the state is past it."""
        if self._done:
            raise RuntimeError("a snapshot loader commits once")
        self._done = True
        if self.refused:
            return False
        state = self._state
        state._set_tables(self._tables, self._not_before)
        state._applied = self._position
        if state.listener is not None:
            state.listener.state_replaced()
        return True
