"""Intents: what a request asks of the log, as plain values the log writer decides on under its locks.

A request that changes anything says what it wants (an intent) and queues it for the process's log writer
(writer.py); the writer reads, under the gates of the batch's users and sessions (gates.py), the state the
decisions need (LockedState) and decide.py makes them, in queue order, exactly as one transaction per
request would have. "Under the lock" below means under those gates; the append lock follows them.

Ending things: EndSessions, RevokeUser (a not-before watermark), RevokeToken. Grants: Login (a session
with its first tokens), Rotate (a refresh: rotation, the grace window, reuse detection), ChangePassword (a
new hash, the user's other sessions ended). Whatever is slow was done before the request was queued
(signing the access token, sealing the successor, argon2), so nothing slow runs while the lock is held; a
decision that finds that preparation stale (a watermark past the prepared token's iat) answers RESIGN and the
request prepares again. Pure: no I/O here.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum

from auth_service import contract as c


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


@dataclass(frozen=True)
class NewRefreshToken:
    """A refresh token to store (its hash only) when the grant that made it is decided."""

    token_hash: bytes
    session_id: uuid.UUID
    generation: int
    created_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class Login:
    """Start a session with its first access and refresh tokens, all prepared (and signed) beforehand."""

    started: c.SessionStarted
    issued: c.TokenIssued
    refresh: NewRefreshToken


@dataclass(frozen=True, eq=False)
class Prepared:
    """A rotation's answer, made before the lock: the access token's event, the successor refresh token, the
    answer sealed for a repeat within the grace window, and the caller's own form of it (`answer`), handed
    as it is to a repeat decided in the same batch."""

    issued: c.TokenIssued
    refresh: NewRefreshToken
    sealed: bytes
    answer: object


@dataclass(frozen=True)
class Rotate:
    """Present a refresh token (by hash) of a session: rotate it, or answer a repeat, or detect a reuse.

    `successor` is None when the caller already saw the token rotated long ago (a reuse): there is nothing
    to give, only the session to end."""

    parent_hash: bytes
    session_id: uuid.UUID
    user_id: str
    successor: Prepared | None


@dataclass(frozen=True)
class ChangePassword:
    """Store a new password hash and end the user's other sessions that may still hold a live token."""

    user_id: str
    password_hash: str
    keep_session: uuid.UUID | None
    changed_at: datetime


@dataclass(frozen=True)
class NewSigningKey:
    """A signing key made (and its private half encrypted) before the lock, to become the active one."""

    kid: str
    alg: str
    public_jwk: dict[str, object]
    private_key_encrypted: bytes
    created_at: datetime


@dataclass(frozen=True)
class RevokeKey:
    """Revoke a signing key: every token it signed. The active key can only go with a `replacement`, which
    becomes active in the same transaction, so the service never stands without a key to sign with."""

    kid: str
    reason: str
    replacement: NewSigningKey | None


Intent = EndSessions | RevokeUser | RevokeToken | Login | Rotate | ChangePassword | RevokeKey


@dataclass(frozen=True)
class Caller:
    """The access token a request came with, checked against the revocations under the append lock: a request
    whose token is revoked by then appends nothing and is refused (the logout route's authentication)."""

    jti: str
    session_id: str
    user_id: str
    kid: str
    iat: int


class Rotation(Enum):
    """What presenting a refresh token means, decided under the lock."""

    ROTATE = "rotate"  # the current token of its family: replace it
    CONCURRENT = "concurrent"  # rotated moments ago (another tab): the same answer the rotation gave
    REUSE = "reuse"  # rotated long ago: stolen or replayed, end the session


def decide_rotation(rotated_at: datetime | None, now: datetime, grace: timedelta) -> Rotation:
    """The refresh grace rule, for the token endpoint and introspection alike: usable unless REUSE."""
    if rotated_at is None:
        return Rotation.ROTATE
    return Rotation.CONCURRENT if now - rotated_at <= grace else Rotation.REUSE


class Verdict(Enum):
    """How a request's intents were decided, beyond the events they appended."""

    DONE = "done"  # appended what it asked for (possibly nothing: already ended)
    ROTATED = "rotated"  # a refresh: its prepared successor was stored
    CONCURRENT = "concurrent"  # a refresh repeated within the grace window: the earlier rotation's answer
    REUSED = "reused"  # a refresh token presented after its grace window: the session is ended
    SESSION_ENDED = "session_ended"  # a refresh of a session that has ended (or of an unknown token)
    ROTATED_AWAY = "rotated_away"  # a repeat within the window whose answer is no longer kept
    RESIGN = "resign"  # prepared on a state that moved (a new watermark, a key become active): prepare again
    UNKNOWN_KEY = "unknown_key"  # a key revocation names no key there is
    CALLER_REVOKED = "caller_revoked"  # the request's own access token is revoked: nothing appended


@dataclass
class Decision:
    """One request's outcome: its events (positioned once written), how it was decided, and for a repeated
    refresh the earlier answer (Prepared from this batch, or sealed bytes from an earlier one)."""

    events: list[c.Event]
    verdict: Verdict = Verdict.DONE
    answer: Prepared | bytes | None = None


@dataclass(frozen=True)
class OpenSession:
    """An open session as the decisions need it."""

    user_id: str
    created_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class LockedState:
    """What the decisions read under the lock.

    `refresh_tokens` maps each presented token's hash to its rotated_at (absent: no such token); `sealed`
    holds the kept answer of each presented token rotated within its window."""

    open_sessions: dict[uuid.UUID, OpenSession]
    watermarks: dict[str, datetime | None]
    refresh_tokens: dict[bytes, datetime | None] = field(default_factory=dict)
    sealed: dict[bytes, bytes] = field(default_factory=dict)
    keys: dict[str, tuple[bool, bool]] = field(default_factory=dict)  # kid -> (retired, revoked)


@dataclass
class Writes:
    """The rows a batch writes besides its events and their projections (credentials are no projection)."""

    refresh_tokens: list[NewRefreshToken] = field(default_factory=list)
    rotated: list[bytes] = field(default_factory=list)
    successors: list[tuple[bytes, bytes]] = field(default_factory=list)  # (parent hash, sealed answer)
    passwords: list[tuple[str, str, datetime]] = field(default_factory=list)  # (user, hash, changed at)
    new_keys: list[NewSigningKey] = field(default_factory=list)
    revoked_keys: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.refresh_tokens
            or self.rotated
            or self.successors
            or self.passwords
            or self.new_keys
            or self.revoked_keys
        )


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
