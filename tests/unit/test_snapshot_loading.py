"""A snapshot parsed, validated and folded in steps: the state loading it at once gives, swapped in whole."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auth_service.contract import ContractError, Event, Revocation, RevocationKind, UnknownEvent
from resource_service.check.state import RevocationState, SnapshotLoader
from resource_service.feed.json_steps import parse_in_steps
from resource_service.feed.snapshot_loading import load_snapshot
from tests.unit.test_state import at, columnar, facts, fold, log_and_deliveries, snapshot


def parsed(text: str, step: int) -> tuple[Any, int]:
    """The document and how many times the parser paused."""
    steps = parse_in_steps(text, step)
    pauses = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value, pauses
        pauses += 1


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=30,
)


@settings(deadline=None)
@given(_json, st.integers(min_value=1, max_value=5), st.booleans())
def test_parsing_in_steps_gives_what_json_loads_gives(value: Any, step: int, spaced: bool) -> None:
    text = json.dumps(value, indent=1 if spaced else None)
    assert parsed(text, step)[0] == json.loads(text)


def test_parsing_pauses_after_every_step_values() -> None:
    text = json.dumps({"columns": {"jti": {"positions": list(range(100))}}})
    value, pauses = parsed(text, 10)
    assert value["columns"]["jti"]["positions"] == list(range(100))
    assert pauses >= 10  # 100 numbers and 3 members, 10 per step


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "[1,",
        "[1 2]",
        '{"a" 1}',
        '{"a":1,}',
        "[1]x",
        "{1:2}",
        '["\x01"]',
        "[-]",
        "{",
        "[01, 2]",
        "[1-2, 3]",
        "[1.e5, 2]",
        '["a\tb", 1]',
        "[1, 2, ]",
    ],
)
def test_parsing_in_steps_refuses_what_json_loads_refuses(bad: str) -> None:
    with pytest.raises(json.JSONDecodeError):
        json.loads(bad)
    with pytest.raises(json.JSONDecodeError):
        parsed(bad, 2)


def _revocations(case: tuple[list[Event | UnknownEvent], list[int]], cut: int) -> list[Revocation]:
    return fold(case[0][:cut]).revocations()


@settings(deadline=None)
@given(log_and_deliveries(), st.data())
def test_loading_a_body_in_steps_equals_loading_the_decoded_snapshot(
    case: tuple[list[Event | UnknownEvent], list[int]], data: st.DataObject
) -> None:
    cut = data.draw(st.integers(min_value=0, max_value=len(case[0])))
    source = _revocations(case, cut)
    for form in (snapshot(cut, *source), columnar(cut, source)):
        state = RevocationState()
        position, loaded = asyncio.run(
            load_snapshot(state, form.model_dump_json().encode(), parse_step=1, row_step=1)
        )
        assert (position, loaded, state.applied_position) == (cut, True, cut)
        assert state.revocations() == source


def test_readers_see_the_old_state_until_the_loader_commits() -> None:
    state = RevocationState()
    old = Revocation(kind=RevocationKind.JTI, subject="old", expires_at=at(300), position=1)
    assert state.load_snapshot(snapshot(1, old))
    loader = SnapshotLoader(state, 5)
    loader.feed_revocations(
        [Revocation(kind=RevocationKind.JTI, subject="new", expires_at=at(300), position=5)]
    )
    assert state.is_revoked(facts(jti="old"))
    assert not state.is_revoked(facts(jti="new"))
    assert state.applied_position == 1
    assert loader.commit()
    assert not state.is_revoked(facts(jti="old"))
    assert state.is_revoked(facts(jti="new"))
    assert state.applied_position == 5
    with pytest.raises(RuntimeError):
        loader.commit()


def test_a_loader_overtaken_by_the_state_meanwhile_is_refused_at_commit() -> None:
    state = RevocationState()
    loader = SnapshotLoader(state, 2)
    kept = Revocation(kind=RevocationKind.JTI, subject="kept", expires_at=at(300), position=3)
    assert state.load_snapshot(snapshot(3, kept))  # the state moved past the snapshot during the fold
    assert loader.refused
    assert not loader.commit()
    assert state.applied_position == 3
    assert state.is_revoked(facts(jti="kept"))


async def test_a_snapshot_older_than_the_state_is_refused_without_folding() -> None:
    state = RevocationState()
    assert state.load_snapshot(snapshot(4))
    assert await load_snapshot(state, columnar(3, []).model_dump_json().encode()) == (3, False)
    assert state.applied_position == 4


@pytest.mark.parametrize(
    "bad",
    [
        b"\xff",
        b"[]",
        b"{",
        b'{"form": "columns", "position": 1}',
        b'{"form": "columns", "position": 1, "taken_at": "2030-01-01T00:00:00Z", "columns": []}',
        b'{"form": "columns", "position": 1, "taken_at": "2030-01-01T00:00:00Z", "columns": {"nope": {}}}',
        b'{"form": "columns", "position": 1, "taken_at": "2030-01-01T00:00:00Z",'
        b' "columns": {"jti": {"subjects": ["a", "b"], "expires_at": [1.0], "positions": [1]}}}',
        b'{"form": "columns", "position": 1, "taken_at": "2030-01-01T00:00:00Z",'
        b' "columns": {"jti": {"subjects": ["a"], "expires_at": [1.0], "positions": [0]}}}',
        b'{"form": "columns", "position": 1, "taken_at": "2030-01-01T00:00:00Z",'
        b' "columns": {"jti": {"subjects": "a", "expires_at": [1.0], "positions": [1]}}}',
        b'{"form": "columns", "position": 1, "taken_at": "2030-01-01T00:00:00Z",'
        b' "columns": {"user": {"subjects": ["a"], "expires_at": [1.0], "positions": [1]}}}',
        b'{"position": 1, "taken_at": "2030-01-01T00:00:00Z", "revocations": {}}',
        b'{"position": 1, "taken_at": "2030-01-01T00:00:00Z", "revocations": [{"kind": "jti"}]}',
    ],
)
async def test_a_malformed_body_is_a_contract_error_and_leaves_the_state(bad: bytes) -> None:
    state = RevocationState()
    kept = Revocation(kind=RevocationKind.JTI, subject="kept", expires_at=at(300), position=1)
    assert state.load_snapshot(snapshot(1, kept))
    with pytest.raises(ContractError):
        await load_snapshot(state, bad, row_step=1)
    assert (state.applied_position, state.revocations()) == (1, [kept])
