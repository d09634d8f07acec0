"""RevocationState: the pure fold of the event log that every request is checked against."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auth_service.contract import (
    ColumnarSnapshot,
    ContractError,
    Event,
    GlobalRevoked,
    KeyRevoked,
    Revocation,
    RevocationKind,
    RevocationSnapshot,
    SessionRevoked,
    SessionStarted,
    TokenIssued,
    TokenRevoked,
    UnknownEvent,
    UserRevoked,
    decode_snapshot,
)
from resource_service.check.entries import subject_key, subject_text
from resource_service.check.state import ApplyResult, RevocationReason, RevocationState, TokenFacts

T0 = datetime(2030, 1, 1, tzinfo=UTC)
SID = uuid.UUID("6f1c2d3e-4a5b-4c6d-8e7f-8091a2b3c4d5")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def ts(seconds: float) -> int:
    return int(at(seconds).timestamp())


def facts(
    *, jti: str = "fresh", sid: str = str(SID), sub: str = "alice", iat: float = 0, kid: str = "k1"
) -> TokenFacts:
    return TokenFacts(jti=jti, sid=sid, sub=sub, iat=ts(iat), exp=ts(iat + 300), kid=kid)


def chain(*events: Event | UnknownEvent, start: int = 1) -> list[Event | UnknownEvent]:
    """The events as the log would hand them out: consecutive positions, each naming the one before."""
    return [
        e.model_copy(update={"position": start + i, "prev_position": start + i - 1})
        for i, e in enumerate(events)
    ]


def fold(events: list[Event | UnknownEvent]) -> RevocationState:
    state = RevocationState()
    for event in events:
        assert state.apply(event) is not ApplyResult.GAP
    return state


def user_revoked(user: str, not_before: float, expires: float = 600) -> UserRevoked:
    return UserRevoked(user_id=user, not_before=at(not_before), expires_at=at(expires), reason="logout_all")


# --- what each revocation covers ---


def test_token_revocation_revokes_only_that_jti() -> None:
    state = fold(chain(TokenRevoked(jti="j1", expires_at=at(300), reason="revoke")))
    assert state.is_revoked(facts(jti="j1")) is RevocationReason.TOKEN
    assert state.is_revoked(facts(jti="j2")) is None


def test_session_revocation_revokes_every_token_of_the_session() -> None:
    other = uuid.uuid4()
    state = fold(chain(SessionRevoked(session_id=SID, user_id="alice", expires_at=at(300), reason="logout")))
    assert state.is_revoked(facts(jti="a")) is RevocationReason.SESSION
    assert state.is_revoked(facts(jti="b")) is RevocationReason.SESSION
    assert state.is_revoked(facts(sid=str(other))) is None


def test_watermark_revokes_tokens_issued_before_it_and_not_at_or_after() -> None:
    state = fold(chain(user_revoked("alice", not_before=100)))
    assert state.is_revoked(facts(iat=99)) is RevocationReason.USER
    assert state.is_revoked(facts(iat=100)) is None
    assert state.is_revoked(facts(iat=101)) is None
    assert state.is_revoked(facts(sub="bob", iat=0)) is None


def test_later_watermark_moves_forward_and_an_earlier_one_never_moves_it_back() -> None:
    state = fold(chain(user_revoked("alice", 100), user_revoked("alice", 200), user_revoked("alice", 50)))
    assert state.is_revoked(facts(iat=150)) is RevocationReason.USER
    assert state.is_revoked(facts(iat=200)) is None


def test_key_revocation_revokes_every_token_signed_by_the_kid() -> None:
    state = fold(chain(KeyRevoked(kid="k1", expires_at=at(300), reason="compromised")))
    assert state.is_revoked(facts(kid="k1")) is RevocationReason.KEY
    assert state.is_revoked(facts(kid="k2")) is None


def test_global_watermark_revokes_every_users_tokens_issued_before_it() -> None:
    state = fold(chain(GlobalRevoked(not_before=at(100), expires_at=at(600), reason="incident")))
    assert state.is_revoked(facts(sub="alice", iat=10)) is RevocationReason.GLOBAL
    assert state.is_revoked(facts(sub="bob", iat=99)) is RevocationReason.GLOBAL
    assert state.is_revoked(facts(sub="bob", iat=100)) is None


# --- position, duplicates, gaps ---


def test_issued_started_and_unknown_events_advance_the_position_and_revoke_nothing() -> None:
    events = chain(
        SessionStarted(user_id="alice", session_id=SID, client_id="web", expires_at=at(9999)),
        TokenIssued(
            user_id="alice",
            session_id=SID,
            jti="j1",
            kid="k1",
            issued_at=T0,
            expires_at=at(300),
            cause="login",
        ),
        UnknownEvent(type="user.renamed"),
    )
    state = RevocationState()
    assert [state.apply(e) for e in events] == [ApplyResult.ADVANCED] * 3
    assert state.applied_position == 3
    assert sum(state.counts().values()) == 0


def test_redelivered_event_is_reported_duplicate_and_changes_nothing() -> None:
    first, second = chain(TokenRevoked(jti="j1", expires_at=at(300), reason="r"), user_revoked("alice", 100))
    state = RevocationState()
    assert state.apply(first) is ApplyResult.CHANGED
    assert state.apply(second) is ApplyResult.CHANGED
    before = state.revocations()
    assert state.apply(first) is ApplyResult.DUPLICATE
    assert state.apply(second) is ApplyResult.DUPLICATE
    assert state.revocations() == before
    assert state.applied_position == 2


def test_event_after_a_gap_is_refused_and_leaves_the_position() -> None:
    first, _missing, third = chain(
        *(TokenRevoked(jti=f"j{i}", expires_at=at(300), reason="r") for i in range(3))
    )
    state = RevocationState()
    state.apply(first)
    assert state.gap_before(third)
    assert state.apply(third) is ApplyResult.GAP
    assert state.applied_position == 1
    assert state.is_revoked(facts(jti="j2")) is None


def test_gap_before_is_false_for_the_next_event_and_for_duplicates() -> None:
    first, second = chain(UnknownEvent(type="x"), UnknownEvent(type="y"))
    state = RevocationState()
    assert not state.gap_before(first)
    state.apply(first)
    assert not state.gap_before(second)
    assert not state.gap_before(first)


def test_event_without_prev_position_is_applied_without_a_gap_check() -> None:
    event = TokenRevoked(jti="j1", expires_at=at(300), reason="r", position=7)
    state = RevocationState()
    assert state.apply(event) is ApplyResult.CHANGED
    assert state.applied_position == 7


def test_event_without_position_is_refused() -> None:
    with pytest.raises(ValueError, match="position"):
        RevocationState().apply(TokenRevoked(jti="j1", expires_at=at(300), reason="r"))


# --- snapshots ---


def snapshot(position: int, *revocations: Revocation) -> RevocationSnapshot:
    return RevocationSnapshot(position=position, taken_at=T0, revocations=list(revocations))


def test_snapshot_replaces_the_state_and_sets_the_position() -> None:
    state = fold(chain(TokenRevoked(jti="old", expires_at=at(300), reason="r")))
    loaded = state.load_snapshot(
        snapshot(
            10,
            Revocation(kind=RevocationKind.JTI, subject="j1", expires_at=at(300), position=4),
            Revocation(
                kind=RevocationKind.USER, subject="bob", not_before=at(50), expires_at=at(600), position=9
            ),
        )
    )
    assert loaded
    assert state.applied_position == 10
    assert state.is_revoked(facts(jti="old")) is None
    assert state.is_revoked(facts(jti="j1")) is RevocationReason.TOKEN
    assert state.is_revoked(facts(sub="bob", iat=49)) is RevocationReason.USER


def test_snapshot_older_than_the_applied_position_is_refused() -> None:
    state = fold(chain(*(TokenRevoked(jti=f"j{i}", expires_at=at(300), reason="r") for i in range(5))))
    assert not state.load_snapshot(snapshot(3))
    assert state.applied_position == 5
    assert state.counts()["jti"] == 5


def test_snapshot_watermark_without_not_before_is_a_contract_error() -> None:
    broken = Revocation(kind=RevocationKind.USER, subject="bob", expires_at=at(600), position=1)
    with pytest.raises(ContractError, match="not_before"):
        RevocationState().load_snapshot(snapshot(1, broken))


# --- pruning ---


def test_prune_keeps_entries_until_expiry_plus_leeway_then_drops_them() -> None:
    state = RevocationState(leeway=30)
    for event in chain(
        TokenRevoked(jti="j1", expires_at=at(100), reason="r"),
        user_revoked("alice", not_before=50, expires=100),
        SessionRevoked(session_id=SID, user_id="alice", expires_at=at(500), reason="r"),
    ):
        state.apply(event)
    assert state.prune(at(130).timestamp()) == 0
    assert state.prune(at(131).timestamp()) == 2
    assert state.counts() == {"jti": 0, "session": 1, "user": 0, "key": 0, "global": 0}


def test_prune_keeps_an_entry_whose_expiry_was_extended() -> None:
    state = RevocationState(leeway=0)
    for event in chain(
        TokenRevoked(jti="j1", expires_at=at(100), reason="r"),
        TokenRevoked(jti="j1", expires_at=at(400), reason="r"),
    ):
        state.apply(event)
    assert state.prune(at(200).timestamp()) == 0
    assert state.is_revoked(facts(jti="j1")) is RevocationReason.TOKEN
    assert state.prune(at(401).timestamp()) == 1


def test_later_revocation_with_an_earlier_expiry_does_not_shorten_the_entry() -> None:
    state = RevocationState(leeway=0)
    for event in chain(
        TokenRevoked(jti="j1", expires_at=at(400), reason="r"),
        TokenRevoked(jti="j1", expires_at=at(100), reason="r"),
    ):
        state.apply(event)
    assert state.prune(at(200).timestamp()) == 0
    assert state.is_revoked(facts(jti="j1")) is RevocationReason.TOKEN


def test_prune_after_snapshot_uses_the_snapshot_expiries() -> None:
    state = RevocationState(leeway=0)
    state.load_snapshot(
        snapshot(2, Revocation(kind=RevocationKind.KEY, subject="k1", expires_at=at(100), position=2))
    )
    assert state.prune(at(99).timestamp()) == 0
    assert state.prune(at(101).timestamp()) == 1
    assert state.is_revoked(facts(kid="k1")) is None


# --- properties ---

_moments = st.integers(min_value=0, max_value=1000)
_users = st.sampled_from(["alice", "bob", "carol"])
_sessions = st.sampled_from([SID, uuid.UUID(int=1), uuid.UUID(int=2)])

_events: st.SearchStrategy[Event | UnknownEvent] = st.one_of(
    st.builds(
        lambda j, e: TokenRevoked(jti=j, expires_at=at(e), reason="r"),
        st.sampled_from(["j1", "j2"]),
        _moments,
    ),
    st.builds(
        lambda s, e: SessionRevoked(session_id=s, user_id="alice", expires_at=at(e), reason="r"),
        _sessions,
        _moments,
    ),
    st.builds(lambda u, n, e: user_revoked(u, n, e), _users, _moments, _moments),
    st.builds(
        lambda k, e: KeyRevoked(kid=k, expires_at=at(e), reason="r"), st.sampled_from(["k1", "k2"]), _moments
    ),
    st.builds(lambda n, e: GlobalRevoked(not_before=at(n), expires_at=at(e), reason="r"), _moments, _moments),
    st.just(UnknownEvent(type="something.new")),
)


@st.composite
def log_and_deliveries(draw: st.DrawFn) -> tuple[list[Event | UnknownEvent], list[int]]:
    log = chain(*draw(st.lists(_events, min_size=1, max_size=12)))
    deliveries = draw(st.lists(st.integers(min_value=0, max_value=len(log) - 1), max_size=40))
    return log, deliveries


@settings(deadline=None)  # behaviour, not speed: a slow CI machine must not fail these
@given(log_and_deliveries())
def test_any_redelivery_order_then_a_gap_fill_equals_the_ordered_log_applied_once(
    case: tuple[list[Event | UnknownEvent], list[int]],
) -> None:
    log, deliveries = case
    state = RevocationState()
    for index in deliveries:  # the broker: duplicates, any order
        state.apply(log[index])
    for event in log:  # the gap fill from the events API, in order
        state.apply(event)
    expected = fold(log)
    assert state.revocations() == expected.revocations()
    assert state.applied_position == expected.applied_position == len(log)


@settings(deadline=None)
@given(log_and_deliveries())
def test_state_always_equals_the_fold_of_the_log_up_to_its_position(
    case: tuple[list[Event | UnknownEvent], list[int]],
) -> None:
    log, deliveries = case
    state = RevocationState()
    for index in deliveries:
        state.apply(log[index])
        assert state.revocations() == fold(log[: state.applied_position]).revocations()


@settings(deadline=None)
@given(log_and_deliveries(), st.data())
def test_snapshot_then_the_rest_of_the_log_equals_the_whole_log(
    case: tuple[list[Event | UnknownEvent], list[int]], data: st.DataObject
) -> None:
    log, _ = case
    cut = data.draw(st.integers(min_value=0, max_value=len(log)))
    source = fold(log[:cut])
    state = RevocationState()
    assert state.load_snapshot(snapshot(cut, *source.revocations()))
    for event in log[cut:]:
        assert state.apply(event) is not ApplyResult.GAP
    assert state.revocations() == fold(log).revocations()


@settings(deadline=None)
@given(log_and_deliveries(), st.lists(_moments, min_size=1, max_size=5))
def test_prune_drops_exactly_the_entries_past_expiry_plus_leeway(
    case: tuple[list[Event | UnknownEvent], list[int]], moments: list[int]
) -> None:
    log, _ = case
    state = RevocationState(leeway=30)
    for event in log:
        state.apply(event)
    for moment in sorted(moments):
        now = at(moment).timestamp()
        survivors = [r for r in state.revocations() if r.expires_at.timestamp() + 30 >= now]
        state.prune(now)
        assert state.revocations() == survivors


# --- compact storage ---


@given(st.one_of(st.uuids().map(str), st.uuids().map(lambda u: u.hex), st.text(max_size=40)))
def test_subject_keys_round_trip_and_only_equal_subjects_share_a_key(subject: str) -> None:
    key = subject_key(subject)
    assert subject_text(key) == subject
    assert subject_key(subject.upper()) != key or subject.upper() == subject


def test_other_spellings_of_a_uuid_do_not_match_the_canonical_jti() -> None:
    jti = SID.hex
    state = fold(chain(TokenRevoked(jti=jti, expires_at=at(300), reason="r")))
    assert state.is_revoked(facts(jti=jti)) is RevocationReason.TOKEN
    for other in (jti.upper(), "0x" + jti[2:], str(SID)):
        assert state.is_revoked(facts(jti=other)) is None


def reference(events: list[Event | UnknownEvent], now: float, leeway: float) -> dict[tuple[str, str], Any]:
    """The simplest model of the fold: a dict of (kind, subject) -> (expiry, not_before), then the prune."""
    model: dict[tuple[str, str], tuple[float, float | None]] = {}
    for e in events:
        if isinstance(e, TokenRevoked):
            k, nb = ("jti", e.jti), None
        elif isinstance(e, SessionRevoked):
            k, nb = ("session", str(e.session_id)), None
        elif isinstance(e, UserRevoked):
            k, nb = ("user", e.user_id), e.not_before.timestamp()
        elif isinstance(e, KeyRevoked):
            k, nb = ("key", e.kid), None
        elif isinstance(e, GlobalRevoked):
            k, nb = ("global", "*"), e.not_before.timestamp()
        else:
            continue
        old_exp, old_nb = model.get(k, (e.expires_at.timestamp(), nb))
        new_nb = None if nb is None else max(nb, old_nb if old_nb is not None else nb)
        model[k] = (max(old_exp, e.expires_at.timestamp()), new_nb)
    return {k: v for k, v in model.items() if v[0] + leeway >= now}


@settings(deadline=None)
@given(log_and_deliveries(), _moments)
def test_compact_state_equals_a_plain_dict_model_of_the_log(
    case: tuple[list[Event | UnknownEvent], list[int]], moment: int
) -> None:
    log, _ = case
    state = RevocationState(leeway=30)
    for event in log:
        state.apply(event)
    state.prune(at(moment).timestamp())
    held = {
        (r.kind.value, r.subject): (
            r.expires_at.timestamp(),
            None if r.not_before is None else r.not_before.timestamp(),
        )
        for r in state.revocations()
    }
    assert held == reference(log, at(moment).timestamp(), 30)


def columnar(position: int, revocations: list[Revocation]) -> ColumnarSnapshot:
    columns: dict[RevocationKind, dict[str, list[Any]]] = {}
    for r in revocations:
        c = columns.setdefault(r.kind, {"subjects": [], "expires_at": [], "positions": [], "not_before": []})
        c["subjects"].append(r.subject)
        c["expires_at"].append(r.expires_at.timestamp())
        c["positions"].append(r.position)
        c["not_before"].append(None if r.not_before is None else r.not_before.timestamp())
    for kind, c in columns.items():
        if kind not in (RevocationKind.USER, RevocationKind.GLOBAL):
            del c["not_before"]
    return ColumnarSnapshot.model_validate({"position": position, "taken_at": T0, "columns": columns})


@settings(deadline=None)
@given(log_and_deliveries(), st.data())
def test_columnar_snapshot_loads_the_same_state_as_the_object_snapshot(
    case: tuple[list[Event | UnknownEvent], list[int]], data: st.DataObject
) -> None:
    log, _ = case
    cut = data.draw(st.integers(min_value=0, max_value=len(log)))
    source = fold(log[:cut]).revocations()
    by_objects, by_columns = RevocationState(), RevocationState()
    assert by_objects.load_snapshot(snapshot(cut, *source))
    assert by_columns.load_snapshot(columnar(cut, source))
    assert by_columns.revocations() == by_objects.revocations() == source
    for event in log[cut:]:
        assert by_columns.apply(event) is not ApplyResult.GAP
    assert by_columns.revocations() == fold(log).revocations()


def test_columnar_watermarks_without_not_before_are_a_contract_error() -> None:
    broken = ColumnarSnapshot.model_validate(
        {
            "position": 1,
            "taken_at": T0,
            "columns": {"user": {"subjects": ["bob"], "expires_at": [1.0], "positions": [1]}},
        }
    )
    with pytest.raises(ContractError, match="not_before"):
        RevocationState().load_snapshot(broken)


def test_decode_snapshot_reads_both_forms_and_refuses_anything_else() -> None:
    revocation = Revocation(kind=RevocationKind.JTI, subject="j1", expires_at=at(300), position=2)
    objects = snapshot(2, revocation)
    columns = columnar(2, [revocation])
    assert decode_snapshot(objects.model_dump_json()) == objects
    assert decode_snapshot(columns.model_dump_json().encode()) == columns
    for bad in (b"[]", b"{", b'{"form": "columns", "position": 1}', b"\xff"):
        with pytest.raises(ContractError):
            decode_snapshot(bad)
