"""The pure rule that turns a batch of intents into events and writes, in queue order, under the lock.

Exactly as one transaction per request would have decided: ending a session already ended appends nothing
(nor does ending it twice in one batch, or after a watermark earlier in the batch covered it); a watermark
is one second past max(this second, the earlier watermark, possibly set earlier in the same batch); a login
whose prepared token is older than the user's watermark prepares again; two refreshes of one token in the
same batch get one successor (the second is a repeat within the grace window), and a refresh after the
window ends the session. Pure: no I/O, time passed in.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

from auth_service import contract as c
from auth_service.log import lifetimes
from auth_service.log.intents import (
    ChangePassword,
    Decision,
    EndSessions,
    Intent,
    LockedState,
    Login,
    OpenSession,
    Prepared,
    RevokeKey,
    RevokeToken,
    RevokeUser,
    Rotate,
    Rotation,
    Verdict,
    Writes,
    decide_rotation,
)


class _Batch:
    """The state as the batch's earlier decisions left it, and what the batch has decided to write."""

    def __init__(self, state: LockedState, now: datetime, ttl: int, grace: timedelta) -> None:
        self.open = dict(state.open_sessions)
        self.marks = dict(state.watermarks)
        self.rotated = dict(state.refresh_tokens)
        self.sealed = state.sealed
        self.keys = dict(state.keys)
        self.given: dict[bytes, Prepared] = {}  # rotations decided in this batch, by parent hash
        self.now, self.ttl, self.grace = now, ttl, grace
        self.until = lifetimes.latest_access_expiry(now, ttl)
        self.writes = Writes()

    def end_sessions(self, intent: EndSessions) -> Decision:
        events: list[c.Event] = []
        for sid in intent.session_ids:
            if self.open.pop(sid, None) is not None:
                events.append(self._session_revoked(sid, intent.user_id, intent.reason))
        return Decision(events)

    def revoke_user(self, intent: RevokeUser) -> Decision:
        user = intent.user_id
        not_before = lifetimes.watermark(self.now, self.marks.get(user))
        self.marks[user] = not_before
        # Later intents of this batch see what the watermark's projection will do to sessions.
        for sid in [s for s, o in self.open.items() if o.user_id == user and o.created_at < not_before]:
            del self.open[sid]
        event = c.UserRevoked(
            user_id=user,
            not_before=not_before,
            expires_at=lifetimes.latest_access_expiry(not_before, self.ttl),
            reason=intent.reason,
            occurred_at=self.now,
        )
        return Decision([event])

    def login(self, intent: Login) -> Decision:
        started = intent.started
        if self._revoked_at_birth(started.user_id, intent.issued):
            return Decision([], Verdict.RESIGN)
        self.open[started.session_id] = OpenSession(started.user_id, started.occurred_at, started.expires_at)
        self.writes.refresh_tokens.append(intent.refresh)
        return Decision([started, intent.issued])

    def rotate(self, intent: Rotate) -> Decision:
        parent, sid = intent.parent_hash, intent.session_id
        if parent not in self.rotated or sid not in self.open:
            return Decision([], Verdict.SESSION_ENDED)
        match decide_rotation(self.rotated[parent], self.now, self.grace):
            case Rotation.REUSE:
                del self.open[sid]
                ended = self._session_revoked(sid, intent.user_id, "refresh_token_reuse")
                return Decision([ended], Verdict.REUSED)
            case Rotation.CONCURRENT:
                answer = self.given.get(parent) or self.sealed.get(parent)
                if answer is None:
                    return Decision([], Verdict.ROTATED_AWAY)
                return Decision([], Verdict.CONCURRENT, answer)
        successor = intent.successor
        if successor is None:  # the caller saw it rotated long ago; it cannot be unrotated since
            return Decision([], Verdict.SESSION_ENDED)
        if self._revoked_at_birth(intent.user_id, successor.issued):
            return Decision([], Verdict.RESIGN)
        self.rotated[parent] = self.now
        self.given[parent] = successor
        self.writes.rotated.append(parent)
        self.writes.refresh_tokens.append(successor.refresh)
        self.writes.successors.append((parent, successor.sealed))
        return Decision([successor.issued], Verdict.ROTATED, successor)

    def change_password(self, intent: ChangePassword) -> Decision:
        user = intent.user_id
        self.writes.passwords.append((user, intent.password_hash, intent.changed_at))
        others = sorted(
            (o.created_at, sid)
            for sid, o in self.open.items()
            if o.user_id == user
            and sid != intent.keep_session
            and lifetimes.may_hold_live_access_token(o.expires_at, self.now, self.ttl)
        )
        # Logged first, so a Shared Signals receiver hears of the new credential before the sessions it ends.
        events: list[c.Event] = [
            c.CredentialChanged(user_id=user, reason="password_change", occurred_at=self.now)
        ]
        for _, sid in others:
            del self.open[sid]
            events.append(self._session_revoked(sid, user, "password_change"))
        return Decision(events)

    def revoke_key(self, intent: RevokeKey) -> Decision:
        known = self.keys.get(intent.kid)
        if known is None:
            return Decision([], Verdict.UNKNOWN_KEY)
        retired, revoked = known
        if revoked:
            return Decision([])  # revoked already: nothing more to tell anyone
        new = intent.replacement
        if not retired:
            if new is None:  # the active key: it goes only with a successor to sign with
                return Decision([], Verdict.RESIGN)
            for kid, (_, was_revoked) in list(self.keys.items()):
                self.keys[kid] = (True, was_revoked)
            self.keys[new.kid] = (False, False)
            self.writes.new_keys.append(new)
        self.keys[intent.kid] = (True, True)
        self.writes.revoked_keys.append(intent.kid)
        # Not last signed + ttl: whoever holds a compromised key can sign tokens with any exp, so the
        # revocation must outlive every such token, and is never pruned.
        event = c.KeyRevoked(kid=intent.kid, expires_at=c.FOREVER, reason=intent.reason, occurred_at=self.now)
        return Decision([event])

    def _revoked_at_birth(self, user: str, issued: c.TokenIssued) -> bool:
        # Revoked when iat < not_before: a watermark set after the token was prepared would revoke it at once.
        mark = self.marks.get(user)
        return mark is not None and issued.issued_at < mark

    def _session_revoked(self, sid: uuid.UUID, user: str, reason: str) -> c.SessionRevoked:
        return c.SessionRevoked(
            session_id=sid, user_id=user, expires_at=self.until, reason=reason, occurred_at=self.now
        )


def decide(
    requests: Sequence[Sequence[Intent]],
    state: LockedState,
    now: datetime,
    access_token_ttl: int,
    grace: timedelta = timedelta(0),
) -> tuple[list[Decision], Writes]:
    """Each request's decision, in queue order, as if each had run alone under the lock; and the batch's
    writes besides its events (pure)."""
    batch = _Batch(state, now, access_token_ttl, grace)
    decided: list[Decision] = []
    for intents in requests:
        outcome = Decision([])
        for intent in intents:
            match intent:
                case EndSessions():
                    one = batch.end_sessions(intent)
                case RevokeUser():
                    one = batch.revoke_user(intent)
                case RevokeToken(event=event):
                    one = Decision([event])
                case Login():
                    one = batch.login(intent)
                case Rotate():
                    one = batch.rotate(intent)
                case ChangePassword():
                    one = batch.change_password(intent)
                case RevokeKey():
                    one = batch.revoke_key(intent)
            outcome.events += one.events
            if one.verdict is not Verdict.DONE:
                outcome.verdict, outcome.answer = one.verdict, one.answer
        decided.append(outcome)
    return decided, batch.writes
