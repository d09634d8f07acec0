"""The event contract: round trips, unknown types, clear errors, and the exported JSON Schema."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from auth_service import contract as c
from auth_service.contract.bearer import MAX_HEADER_BYTES, MalformedBearer, parse_bearer

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
SID = uuid.uuid4()

EXAMPLES: list[c.Event] = [
    c.SessionStarted(
        user_id="u1",
        session_id=SID,
        client_id="web",
        user_agent="ua",
        client_address="127.0.0.1",
        expires_at=T0 + timedelta(days=30),
    ),
    c.TokenIssued(
        user_id="u1",
        session_id=SID,
        jti="j1",
        kid="k1",
        issued_at=T0,
        expires_at=T0 + timedelta(minutes=5),
        cause="login",
    ),
    c.TokenRevoked(jti="j1", user_id="u1", session_id=SID, expires_at=T0, reason="revoke"),
    c.SessionRevoked(session_id=SID, user_id="u1", expires_at=T0, reason="logout"),
    c.UserRevoked(user_id="u1", not_before=T0, expires_at=T0, reason="logout_all"),
    c.KeyRevoked(kid="k1", expires_at=T0, reason="compromised"),
    c.GlobalRevoked(not_before=T0, expires_at=T0, reason="incident"),
    c.CredentialChanged(user_id="u1", reason="password_change"),
    c.SsfVerification(stream_id="s1", state="abc"),
    c.SsfStreamUpdated(stream_id="s1", status="enabled", reason="3 events dropped"),
]


def test_every_event_type_has_an_example() -> None:
    assert {e.type.value for e in EXAMPLES} == c.KNOWN_TYPES


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: e.type.value)
def test_every_event_type_round_trips(event: c.Event) -> None:
    positioned = event.model_copy(update={"position": 7, "prev_position": 6})
    assert c.decode(c.encode(positioned)) == positioned
    assert c.decode(c.to_json_dict(positioned)) == positioned


def test_unknown_type_decodes_as_unknown_and_keeps_its_fields() -> None:
    raw = {
        "schema_version": 1,
        "type": "device.lost",
        "event_id": str(uuid.uuid4()),
        "occurred_at": "2026-11-27T12:00:00Z",
        "position": 3,
        "prev_position": 2,
        "device": "d1",
    }
    event = c.decode(json.dumps(raw))
    assert isinstance(event, c.UnknownEvent)
    assert event.type == "device.lost"
    assert event.position == 3
    assert event.model_extra == {"device": "d1"}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "malformed JSON"),
        (b"\xff\xfe", "not valid UTF-8"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"type": "token.revoked"}', "missing field 'schema_version'"),
        (b'{"schema_version": 2, "type": "token.revoked"}', "unsupported schema_version 2"),
        (b'{"schema_version": true, "type": "token.revoked"}', "unsupported schema_version True"),
        (b'{"schema_version": 1}', "field 'type'"),
        (b'{"schema_version": 1, "type": "token.revoked", "jti": "j"}', "expires_at: Field required"),
        (
            b'{"schema_version": 1, "type": "session.revoked", "session_id": "nope", "user_id": "u",'
            b' "expires_at": "2026-01-01T00:00:00Z", "reason": "x"}',
            "session_id",
        ),
    ],
)
def test_malformed_input_gives_a_clear_error_naming_the_problem(raw: bytes, message: str) -> None:
    with pytest.raises(c.ContractError, match=message):
        c.decode(raw)


def test_naive_timestamps_are_refused() -> None:
    raw = c.to_json_dict(EXAMPLES[2]) | {"expires_at": "2026-01-01T00:00:00"}
    with pytest.raises(c.ContractError, match="expires_at"):
        c.decode(raw)


def test_heartbeat_round_trips_and_is_validated() -> None:
    beat = c.Heartbeat(head_position=41, sent_at=T0)
    assert c.decode_heartbeat(c.encode(beat)) == beat
    with pytest.raises(c.ContractError, match="head_position"):
        c.decode_heartbeat(b'{"schema_version": 1, "type": "relay.heartbeat", "head_position": -1}')


def test_exported_json_schema_matches_the_code() -> None:
    exported = Path(__file__).resolve().parents[2] / "docs" / "event-schema.json"
    assert exported.read_text() == c.json_schema_text(), (
        "docs/event-schema.json is stale: run `python -m auth_service.contract > docs/event-schema.json`"
    )


def test_examples_validate_against_the_exported_schema() -> None:
    import jsonschema

    schema = c.json_schema()
    for event in EXAMPLES:
        jsonschema.validate(c.to_json_dict(event), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"schema_version": 1, "type": "token.revoked"}, schema)


@pytest.mark.parametrize(
    ("header", "token"),
    [(None, None), ("", None), ("Basic abc", None), ("Bearer abc", "abc"), ("bearer  abc ", "abc")],
)
def test_a_bearer_header_gives_its_token_or_none_for_no_bearer_credentials(
    header: str | None, token: str | None
) -> None:
    assert parse_bearer(header) == token


@pytest.mark.parametrize(
    "header", ["Bearer", "Bearer a b", "Bearer a,b", "Bearer é", "Bearer " + "a" * MAX_HEADER_BYTES]
)
def test_a_malformed_bearer_header_is_refused_with_a_reason(header: str) -> None:
    with pytest.raises(MalformedBearer, match=r"\w"):
        parse_bearer(header)
