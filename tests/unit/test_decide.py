"""The log writer's decisions for a batch: in queue order, exactly as one request at a time would decide."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from auth_service import contract as c
from auth_service.log.decide import decide
from auth_service.log.intents import (
    ChangePassword,
    EndSessions,
    LockedState,
    Login,
    NewRefreshToken,
    NewSigningKey,
    OpenSession,
    Prepared,
    RevokeKey,
    RevokeUser,
    Rotate,
    Verdict,
)

NOW = datetime(2026, 12, 5, 12, 0, 0, tzinfo=UTC)
TTL = 300
GRACE = timedelta(seconds=10)
USER = "alice"


def _session(created: datetime = NOW - timedelta(hours=1)) -> OpenSession:
    return OpenSession(USER, created, NOW + timedelta(days=1))


def _prepared(sid: uuid.UUID, iat: datetime = NOW) -> Prepared:
    issued = c.TokenIssued(
        user_id=USER,
        session_id=sid,
        jti=uuid.uuid4().hex,
        kid="k1",
        issued_at=iat,
        expires_at=iat + timedelta(seconds=TTL),
        cause="refresh",
        occurred_at=NOW,
    )
    refresh = NewRefreshToken(uuid.uuid4().bytes * 2, sid, 2, NOW, NOW + timedelta(days=1))
    return Prepared(issued, refresh, b"sealed-" + refresh.token_hash, object())


def _login(iat: datetime = NOW) -> Login:
    sid = uuid.uuid4()
    started = c.SessionStarted(
        user_id=USER, session_id=sid, client_id="web", expires_at=NOW + timedelta(days=1), occurred_at=NOW
    )
    issued = c.TokenIssued(
        user_id=USER,
        session_id=sid,
        jti=uuid.uuid4().hex,
        kid="k1",
        issued_at=iat,
        expires_at=iat + timedelta(seconds=TTL),
        cause="login",
        occurred_at=NOW,
    )
    return Login(started, issued, NewRefreshToken(b"h" * 32, sid, 1, NOW, NOW + timedelta(days=1)))


def _state(
    sessions: dict[uuid.UUID, OpenSession], tokens: dict[bytes, datetime | None], **more: object
) -> LockedState:
    return LockedState(open_sessions=sessions, watermarks={}, refresh_tokens=tokens, **more)  # type: ignore[arg-type]


def test_two_refreshes_of_one_token_in_a_batch_get_one_successor() -> None:
    sid, parent = uuid.uuid4(), b"p" * 32
    first, second = _prepared(sid), _prepared(sid)
    decided, writes = decide(
        [[Rotate(parent, sid, USER, first)], [Rotate(parent, sid, USER, second)]],
        _state({sid: _session()}, {parent: None}),
        NOW,
        TTL,
        GRACE,
    )
    assert [d.verdict for d in decided] == [Verdict.ROTATED, Verdict.CONCURRENT]
    assert decided[1].answer is first  # the very answer the rotation gave, never a sibling
    assert [len(d.events) for d in decided] == [1, 0]
    assert writes.rotated == [parent]
    assert writes.refresh_tokens == [first.refresh]
    assert writes.successors == [(parent, first.sealed)]


def test_a_repeat_within_the_window_gets_the_answer_kept_by_an_earlier_batch() -> None:
    sid, parent = uuid.uuid4(), b"p" * 32
    state = _state({sid: _session()}, {parent: NOW - GRACE / 2}, sealed={parent: b"kept"})
    [decision], writes = decide([[Rotate(parent, sid, USER, _prepared(sid))]], state, NOW, TTL, GRACE)
    assert (decision.verdict, decision.answer, decision.events) == (Verdict.CONCURRENT, b"kept", [])
    assert not writes


def test_a_repeat_whose_kept_answer_is_gone_is_refused_without_a_new_token() -> None:
    sid, parent = uuid.uuid4(), b"p" * 32
    state = _state({sid: _session()}, {parent: NOW - GRACE / 2})
    [decision], writes = decide([[Rotate(parent, sid, USER, _prepared(sid))]], state, NOW, TTL, GRACE)
    assert decision.verdict is Verdict.ROTATED_AWAY
    assert not writes


def test_a_refresh_after_the_window_ends_the_session_once_and_refuses_what_follows() -> None:
    sid, parent = uuid.uuid4(), b"p" * 32
    state = _state({sid: _session()}, {parent: NOW - GRACE * 2})
    decided, writes = decide(
        [[Rotate(parent, sid, USER, _prepared(sid))], [Rotate(parent, sid, USER, None)]],
        state,
        NOW,
        TTL,
        GRACE,
    )
    assert [d.verdict for d in decided] == [Verdict.REUSED, Verdict.SESSION_ENDED]
    [ended] = decided[0].events
    assert isinstance(ended, c.SessionRevoked)
    assert (ended.session_id, ended.reason) == (sid, "refresh_token_reuse")
    assert decided[1].events == []
    assert not writes


def test_a_logout_before_a_refresh_in_the_same_batch_refuses_the_refresh() -> None:
    sid, parent = uuid.uuid4(), b"p" * 32
    state = _state({sid: _session()}, {parent: None})
    decided, writes = decide(
        [[EndSessions(USER, (sid,), "logout_session")], [Rotate(parent, sid, USER, _prepared(sid))]],
        state,
        NOW,
        TTL,
        GRACE,
    )
    assert [d.verdict for d in decided] == [Verdict.DONE, Verdict.SESSION_ENDED]
    assert [e.type for e in decided[0].events] == [c.EventType.SESSION_REVOKED]
    assert not writes


def test_a_refresh_before_a_logout_in_the_same_batch_rotates_then_the_session_ends() -> None:
    sid, parent = uuid.uuid4(), b"p" * 32
    state = _state({sid: _session()}, {parent: None})
    decided, _ = decide(
        [[Rotate(parent, sid, USER, _prepared(sid))], [EndSessions(USER, (sid,), "logout_session")]],
        state,
        NOW,
        TTL,
        GRACE,
    )
    assert [d.verdict for d in decided] == [Verdict.ROTATED, Verdict.DONE]
    assert [e.type for d in decided for e in d.events] == [
        c.EventType.TOKEN_ISSUED,
        c.EventType.SESSION_REVOKED,
    ]


def test_a_refresh_of_an_unknown_token_or_an_ended_session_appends_nothing() -> None:
    sid, parent = uuid.uuid4(), b"p" * 32
    decided, writes = decide(
        [[Rotate(parent, sid, USER, _prepared(sid))]], _state({}, {parent: None}), NOW, TTL, GRACE
    )
    assert decided[0].verdict is Verdict.SESSION_ENDED
    decided, writes = decide(
        [[Rotate(parent, sid, USER, _prepared(sid))]], _state({sid: _session()}, {}), NOW, TTL, GRACE
    )
    assert decided[0].verdict is Verdict.SESSION_ENDED
    assert not writes


def test_a_login_then_logout_everywhere_in_one_batch_ends_the_new_session_too() -> None:
    login = _login(iat=NOW - timedelta(seconds=1))
    decided, writes = decide(
        [[login], [RevokeUser(USER, "logout_all")], [EndSessions(USER, (login.started.session_id,), "x")]],
        _state({}, {}),
        NOW,
        TTL,
        GRACE,
    )
    assert [[e.type for e in d.events] for d in decided] == [
        [c.EventType.SESSION_STARTED, c.EventType.TOKEN_ISSUED],
        [c.EventType.USER_REVOKED],
        [],  # the watermark ended it already: nothing more to append
    ]
    assert writes.refresh_tokens == [login.refresh]


def test_a_login_prepared_below_a_watermark_set_before_it_is_prepared_again() -> None:
    login = _login(iat=NOW)
    decided, writes = decide([[RevokeUser(USER, "logout_all")], [login]], _state({}, {}), NOW, TTL, GRACE)
    [revoked] = decided[0].events
    assert isinstance(revoked, c.UserRevoked)
    assert login.issued.issued_at < revoked.not_before  # it would be born revoked
    assert (decided[1].verdict, decided[1].events) == (Verdict.RESIGN, [])
    assert not writes


def test_a_password_change_ends_the_other_sessions_that_may_hold_a_live_token() -> None:
    keep, other, dead = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    sessions = {
        keep: _session(),
        other: _session(NOW - timedelta(minutes=5)),
        # Expired longer ago than an access token lives: no token of it can still be accepted.
        dead: OpenSession(USER, NOW - timedelta(days=3), NOW - timedelta(seconds=TTL + 60)),
    }
    [decision], writes = decide(
        [[ChangePassword(USER, "argon2-hash", keep, NOW)]], _state(sessions, {}), NOW, TTL, GRACE
    )
    assert [(e.session_id, e.reason) for e in decision.events if isinstance(e, c.SessionRevoked)] == [
        (other, "password_change")
    ]
    assert writes.passwords == [(USER, "argon2-hash", NOW)]


def _new_key(kid: str = "k2") -> NewSigningKey:
    return NewSigningKey(kid, "RS256", {"kid": kid}, b"encrypted", NOW)


def test_revoking_the_active_key_makes_its_prepared_successor_active_in_the_same_batch() -> None:
    state = LockedState(open_sessions={}, watermarks={}, keys={"k1": (False, False)})
    [decision], writes = decide([[RevokeKey("k1", "compromised", _new_key())]], state, NOW, TTL, GRACE)
    [event] = decision.events
    assert isinstance(event, c.KeyRevoked)
    assert (event.kid, event.expires_at) == ("k1", c.FOREVER)  # a leaked key signs any exp: never pruned
    assert [k.kid for k in writes.new_keys] == ["k2"]
    assert writes.revoked_keys == ["k1"]


def test_the_active_key_is_never_revoked_without_a_successor() -> None:
    state = LockedState(open_sessions={}, watermarks={}, keys={"k1": (False, False)})
    [decision], writes = decide([[RevokeKey("k1", "compromised", None)]], state, NOW, TTL, GRACE)
    assert (decision.verdict, decision.events) == (Verdict.RESIGN, [])
    assert not writes


def test_a_key_revoked_twice_or_unknown_appends_nothing_more() -> None:
    state = LockedState(open_sessions={}, watermarks={}, keys={"k0": (True, False)})
    decided, writes = decide(
        [[RevokeKey("k0", "x", None)], [RevokeKey("k0", "x", None)], [RevokeKey("nope", "x", None)]],
        state,
        NOW,
        TTL,
        GRACE,
    )
    assert [(d.verdict, len(d.events)) for d in decided] == [
        (Verdict.DONE, 1),
        (Verdict.DONE, 0),
        (Verdict.UNKNOWN_KEY, 0),
    ]
    assert writes.revoked_keys == ["k0"]
    assert not writes.new_keys  # a retired key needs no successor
