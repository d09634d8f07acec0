"""The event contract: versioned event types, the snapshot shapes, and their JSON encoding.

This package imports only the standard library and pydantic. The producer (auth_service) owns it; consumers
(resource_service, and anyone else reading the exchange or the events API) import it and nothing else of
auth_service, as `from auth_service import contract as c` or from its modules: `events` (the event types,
the heartbeat, the events API's page, encode and decode) and `snapshot` (the live revocations at one
position, object and columnar form, and decode_snapshot), and `bearer` (the RFC 6750 header, parsed the
same way by both sides). `python -m auth_service.contract` prints the
JSON Schema (docs/event-schema.json).

Wire form of a logged event (message body on the exchange, item of the events API, `payload` in the log)::

    {"schema_version": 1, "type": "token.revoked", "event_id": "...", "occurred_at": "...",
     "position": 42, "prev_position": 41, ...the type's own fields...}

`position` and `prev_position` are null before the event is appended. A token is covered by a not-before
watermark (`user.revoked`, `global.revoked`) when its `iat` is strictly less than `not_before`; producers
set `not_before` to a whole second past the `iat` of every token issued before the revocation.

Error tree::

    ContractError (ValueError)    malformed JSON, wrong schema_version, missing or invalid fields
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import TypeAdapter

from auth_service.contract.events import (
    FOREVER,
    HEARTBEAT_TYPE,
    KNOWN_TYPES,
    SCHEMA_VERSION,
    ContractError,
    CredentialChanged,
    Event,
    EventPage,
    EventType,
    GlobalRevoked,
    Heartbeat,
    KeyRevoked,
    SessionRevoked,
    SessionStarted,
    SsfStreamUpdated,
    SsfVerification,
    TokenIssued,
    TokenRevoked,
    UnknownEvent,
    UserRevoked,
    decode,
    decode_heartbeat,
    encode,
    to_json_dict,
    utcnow,
)
from auth_service.contract.snapshot import (
    GLOBAL_SUBJECT,
    ColumnarSnapshot,
    Revocation,
    RevocationColumns,
    RevocationKind,
    RevocationSnapshot,
    decode_snapshot,
)

__all__ = [
    "FOREVER",
    "GLOBAL_SUBJECT",
    "HEARTBEAT_TYPE",
    "KNOWN_TYPES",
    "SCHEMA_VERSION",
    "ColumnarSnapshot",
    "ContractError",
    "CredentialChanged",
    "Event",
    "EventPage",
    "EventType",
    "GlobalRevoked",
    "Heartbeat",
    "KeyRevoked",
    "Revocation",
    "RevocationColumns",
    "RevocationKind",
    "RevocationSnapshot",
    "SessionRevoked",
    "SessionStarted",
    "SsfStreamUpdated",
    "SsfVerification",
    "TokenIssued",
    "TokenRevoked",
    "UnknownEvent",
    "UserRevoked",
    "decode",
    "decode_heartbeat",
    "decode_snapshot",
    "encode",
    "json_schema",
    "json_schema_text",
    "to_json_dict",
    "utcnow",
]


def json_schema() -> dict[str, Any]:
    """The JSON Schema of every event type, the heartbeat and the snapshot (docs/event-schema.json)."""
    schema = TypeAdapter(Event | Heartbeat | RevocationSnapshot | ColumnarSnapshot | EventPage).json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"tokenlife events, schema_version {SCHEMA_VERSION}",
        **schema,
    }


def json_schema_text() -> str:
    """The exported schema file's exact text."""
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
