"""WatchIndex: open connections ended when the state folds in a revocation that covers them, or by time."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from auth_service.contract import (
    GlobalRevoked,
    KeyRevoked,
    RevocationKind,
    RevocationSnapshot,
    SessionRevoked,
    TokenIssued,
    TokenRevoked,
)
from auth_service.contract import Revocation as Rev
from resource_service.check.state import RevocationReason, RevocationState, TokenFacts
from resource_service.check.watch import EndReason, Watch, WatchIndex
from tests.unit.test_state import at, chain, facts, ts, user_revoked

SID_A = str(uuid.UUID(int=1))
SID_B = str(uuid.UUID(int=2))


class Ends:
    """Records each connection's end, as the web layer's callback would be called."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[EndReason, str]] = {}

    def callback(self, name: str) -> Callable[[EndReason, str], None]:
        def on_end(reason: EndReason, detail: str) -> None:
            assert name not in self.seen, f"{name} ended twice"
            self.seen[name] = (reason, detail)

        return on_end


def watched(index: WatchIndex, ends: Ends, name: str, token: TokenFacts, dead_at: float = 1e12) -> Watch:
    watch = index.add(token, dead_at, ends.callback(name))
    assert isinstance(watch, Watch)
    return watch


def setup() -> tuple[RevocationState, WatchIndex, Ends]:
    state = RevocationState()
    return state, WatchIndex(state), Ends()


def apply_all(state: RevocationState, *events: object, start: int = 1) -> None:
    for event in chain(*events, start=start):  # type: ignore[arg-type]
        state.apply(event)


def test_a_token_revocation_ends_every_connection_of_that_jti_and_no_other() -> None:
    state, index, ends = setup()
    watched(index, ends, "first", facts(jti="j1"))
    watched(index, ends, "second", facts(jti="j1"))
    watched(index, ends, "other", facts(jti="j2"))
    apply_all(state, TokenRevoked(jti="j1", expires_at=at(300), reason="revoke"))
    assert ends.seen == {
        "first": (EndReason.REVOKED, "token_revoked"),
        "second": (EndReason.REVOKED, "token_revoked"),
    }
    assert len(index) == 1


def test_a_session_revocation_ends_that_session_only_not_the_users_other_sessions() -> None:
    state, index, ends = setup()
    watched(index, ends, "this", facts(jti="j1", sid=SID_A))
    watched(index, ends, "other_session", facts(jti="j2", sid=SID_B))
    watched(index, ends, "other_user", facts(jti="j3", sid=str(uuid.UUID(int=3)), sub="bob"))
    apply_all(
        state,
        SessionRevoked(session_id=uuid.UUID(SID_A), user_id="alice", expires_at=at(300), reason="logout"),
    )
    assert ends.seen == {"this": (EndReason.REVOKED, "session_revoked")}


def test_a_user_watermark_ends_the_users_older_tokens_not_newer_ones_nor_other_users() -> None:
    state, index, ends = setup()
    watched(index, ends, "old", facts(jti="j1", iat=0))
    watched(index, ends, "new", facts(jti="j2", iat=20))
    watched(index, ends, "bob", facts(jti="j3", sub="bob", iat=0))
    apply_all(state, user_revoked("alice", not_before=10))
    assert ends.seen == {"old": (EndReason.REVOKED, "user_revoked")}


def test_a_key_revocation_ends_every_connection_signed_by_that_key() -> None:
    state, index, ends = setup()
    watched(index, ends, "k1", facts(jti="j1", kid="k1"))
    watched(index, ends, "k1_bob", facts(jti="j2", kid="k1", sub="bob"))
    watched(index, ends, "k2", facts(jti="j3", kid="k2"))
    apply_all(state, KeyRevoked(kid="k1", expires_at=at(300), reason="rotated"))
    assert set(ends.seen) == {"k1", "k1_bob"}
    assert ends.seen["k1"] == (EndReason.REVOKED, "key_revoked")


def test_a_global_watermark_ends_every_connection_issued_before_it() -> None:
    state, index, ends = setup()
    watched(index, ends, "old", facts(jti="j1", iat=0))
    watched(index, ends, "new", facts(jti="j2", iat=20, sub="bob"))
    apply_all(state, GlobalRevoked(not_before=at(10), expires_at=at(300), reason="incident"))
    assert ends.seen == {"old": (EndReason.REVOKED, "global_revoked")}


def test_an_already_revoked_token_is_refused_instead_of_watched() -> None:
    state, index, ends = setup()
    apply_all(state, TokenRevoked(jti="j1", expires_at=at(300), reason="revoke"))
    assert index.add(facts(jti="j1"), 1e12, ends.callback("late")) is RevocationReason.TOKEN
    assert len(index) == 0
    assert ends.seen == {}


def test_an_event_that_revokes_nothing_new_ends_nothing() -> None:
    state, index, ends = setup()
    apply_all(state, TokenRevoked(jti="j1", expires_at=at(300), reason="revoke"))
    watched(index, ends, "bystander", facts(jti="j2"))
    issued = TokenIssued(
        jti="j9",
        user_id="alice",
        session_id=uuid.UUID(SID_A),
        issued_at=at(0),
        expires_at=at(300),
        kid="k1",
        cause="login",
    )
    # The same revocation again, and an issued token: neither covers the open connection.
    apply_all(state, TokenRevoked(jti="j1", expires_at=at(300), reason="revoke"), issued, start=2)
    assert ends.seen == {}
    assert state.applied_position == 3


def test_a_snapshot_that_replaces_the_state_ends_the_connections_it_revokes() -> None:
    state, index, ends = setup()
    watched(index, ends, "revoked_meanwhile", facts(jti="j1", sid=SID_A))
    watched(index, ends, "still_fine", facts(jti="j2", sid=SID_B))
    snapshot = RevocationSnapshot(
        position=7,
        taken_at=at(0),
        revocations=[
            Rev(kind=RevocationKind.SESSION, subject=SID_A, expires_at=at(300), not_before=None, position=7)
        ],
    )
    assert state.load_snapshot(snapshot)
    assert ends.seen == {"revoked_meanwhile": (EndReason.REVOKED, "session_revoked")}


def test_expire_ends_the_connections_whose_token_is_dead_and_says_when_the_next_dies() -> None:
    _, index, ends = setup()
    watched(index, ends, "soon", facts(jti="j1"), dead_at=ts(100))
    watched(index, ends, "later", facts(jti="j2"), dead_at=ts(200))
    assert index.next_expiry() == ts(100)
    assert index.expire(ts(99)) == 0
    assert index.expire(ts(100)) == 1
    assert ends.seen == {"soon": (EndReason.EXPIRED, "token_expired")}
    assert index.next_expiry() == ts(200)


def test_end_all_ends_every_connection_with_the_reason_given() -> None:
    _, index, ends = setup()
    watched(index, ends, "a", facts(jti="j1"))
    watched(index, ends, "b", facts(jti="j2", sub="bob"))
    assert index.end_all(EndReason.STALE, "state_stale") == 2
    assert ends.seen == {"a": (EndReason.STALE, "state_stale"), "b": (EndReason.STALE, "state_stale")}
    assert len(index) == 0
    assert index.next_expiry() is None


def test_a_removed_connection_is_never_ended_and_churn_does_not_grow_the_index() -> None:
    state, index, ends = setup()
    for i in range(1000):
        index.remove(watched(index, ends, f"gone{i}", facts(jti=f"j{i}"), dead_at=ts(i)))
    kept = watched(index, ends, "kept", facts(jti="kept"), dead_at=ts(5000))
    apply_all(state, TokenRevoked(jti="j1", expires_at=at(300), reason="revoke"))
    assert index.expire(ts(4000)) == 0
    assert ends.seen == {}
    assert len(index) == 1
    assert len(index._expiry) <= 64
    index.remove(kept)
    index.remove(kept)
    assert len(index) == 0


def test_a_callback_that_raises_is_counted_and_the_state_still_advances() -> None:
    state, index, ends = setup()

    def broken(reason: EndReason, detail: str) -> None:
        raise RuntimeError("bug in a connection's callback")

    index.add(facts(jti="j1"), 1e12, broken)
    watched(index, ends, "fine", facts(jti="j1"))
    apply_all(state, TokenRevoked(jti="j1", expires_at=at(300), reason="revoke"))
    assert state.applied_position == 1
    assert index.callback_errors == 1
    assert "fine" in ends.seen


def test_without_an_index_the_state_folds_as_before() -> None:
    state = RevocationState()
    apply_all(state, TokenRevoked(jti="j1", expires_at=at(300), reason="revoke"))
    assert state.listener is None
    assert state.is_revoked(facts(jti="j1")) is RevocationReason.TOKEN
