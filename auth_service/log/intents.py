"""Revocation intents, and the pure rule that turns a batch of them into events (log_writer's decisions).

A request that ends something says what it wants (an intent); the group committer reads, under the append
lock, the state these decisions need, and `decide` makes them in queue order, exactly as one transaction per
request would have: ending a session already ended appends nothing (nor does ending it twice in one batch, or
after a watermark earlier in the batch covered it), and a watermark is one second past max(this second, the
earlier watermark, possibly set earlier in the same batch). Pure: no I/O, time passed in.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from auth_service import contract as c
from auth_service.log import lifetimes


@dataclass(frozen=True)
class EndSessions:
    """End these sessions of a user: one session.revoked for each that is still open under the lock."""

    user_id: str
    session_ids: tuple[uuid.UUID, ...]
    reason: str


@dataclass(frozen=True)
class RevokeUser:
    """Revoke every token of the user issued so far: a user.revoked watermark computed under the lock."""

    user_id: str
    reason: str


@dataclass(frozen=True)
class RevokeToken:
    """Revoke one access token: its token.revoked, appended as it is."""

    event: c.TokenRevoked


Intent = EndSessions | RevokeUser | RevokeToken


@dataclass(frozen=True)
class Caller:
    """The access token a request came with, checked against the revocations under the append lock: a request
    whose token is revoked by then appends nothing and is refused (the logout route's authentication)."""

    jti: str
    session_id: str
    user_id: str
    kid: str
    iat: int


def revocation_reason(rows: Sequence[tuple[str, str, datetime | None]], iat: int) -> str | None:
    """Why a token is revoked, given the revocation rows that name it (None: it is not).

    The rule, one of two places: batch_sql.REVOKED_CALLERS says it in SQL for the log writer, and
    tests/integration/test_log_writer.py holds the two equal."""
    for kind, _subject, not_before in rows:
        if kind in (c.RevocationKind.USER, c.RevocationKind.GLOBAL):
            if not_before is not None and iat < not_before.timestamp():
                return f"{kind}_revoked"
        else:
            return f"{kind}_revoked"
    return None


@dataclass(frozen=True)
class LockedState:
    """What the decisions read under the lock: open sessions (user, created_at) and current watermarks."""

    open_sessions: dict[uuid.UUID, tuple[str, datetime]]
    watermarks: dict[str, datetime | None]


def decide(
    requests: Sequence[Sequence[Intent]], state: LockedState, now: datetime, access_token_ttl: int
) -> list[list[c.Event]]:
    """The events of each request, in queue order, as if each had run alone under the lock (pure)."""
    open_ = dict(state.open_sessions)
    marks = dict(state.watermarks)
    until = lifetimes.latest_access_expiry(now, access_token_ttl)
    decided: list[list[c.Event]] = []
    for intents in requests:
        events: list[c.Event] = []
        for intent in intents:
            match intent:
                case EndSessions(user_id=user, session_ids=sids, reason=reason):
                    for sid in sids:
                        if open_.pop(sid, None) is not None:
                            events.append(
                                c.SessionRevoked(
                                    session_id=sid,
                                    user_id=user,
                                    expires_at=until,
                                    reason=reason,
                                    occurred_at=now,
                                )
                            )
                case RevokeUser(user_id=user, reason=reason):
                    not_before = lifetimes.watermark(now, marks.get(user))
                    marks[user] = not_before
                    # Later intents of this batch see what the watermark's projection will do to sessions.
                    for sid in [s for s, (u, at) in open_.items() if u == user and at < not_before]:
                        del open_[sid]
                    events.append(
                        c.UserRevoked(
                            user_id=user,
                            not_before=not_before,
                            expires_at=lifetimes.latest_access_expiry(not_before, access_token_ttl),
                            reason=reason,
                            occurred_at=now,
                        )
                    )
                case RevokeToken(event=event):
                    events.append(event)
        decided.append(events)
    return decided
