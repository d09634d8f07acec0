"""A batch as the arrays its statements take (batch_sql.ARG_TYPES), by argument name: one array per column,
so a batch of any size is a fixed number of arguments and the statements run set-wise over them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from auth_service import contract as c
from auth_service.log.batch_sql import EVENT_ARGS
from auth_service.log.intents import Caller, Writes


def columns(events: Sequence[c.Event]) -> dict[str, list[Any]]:
    """The events as the writes' arrays, by argument name (EVENT_ARGS)."""
    cols: dict[str, list[Any]] = {name: [] for name in EVENT_ARGS}
    for e in events:
        cols["types"].append(e.type.value)
        cols["occurred"].append(e.occurred_at)
        cols["user_ids"].append(getattr(e, "user_id", None))
        cols["session_ids"].append(getattr(e, "session_id", None))
        cols["jtis"].append(getattr(e, "jti", None))
        cols["kids"].append(getattr(e, "kid", None))
        cols["not_befores"].append(getattr(e, "not_before", None))
        cols["expires"].append(e.expires_at)
        cols["reasons"].append(getattr(e, "reason", None))
        cols["event_ids"].append(e.event_id)
        cols["versions"].append(e.schema_version)
        cols["payloads"].append(c.encode(e).decode())
    return cols


def write_columns(writes: Writes) -> dict[str, list[Any]]:
    """The batch's other rows as the writes' arrays, by argument name."""
    tokens = writes.refresh_tokens
    return {
        "rt_hashes": [t.token_hash for t in tokens],
        "rt_sessions": [t.session_id for t in tokens],
        "rt_generations": [t.generation for t in tokens],
        "rt_created": [t.created_at for t in tokens],
        "rt_expires": [t.expires_at for t in tokens],
        "rotated": list(writes.rotated),
        "succ_hashes": [parent for parent, _ in writes.successors],
        "succ_sealed": [sealed for _, sealed in writes.successors],
        "pw_users": [user for user, _, _ in writes.passwords],
        "pw_hashes": [hashed for _, hashed, _ in writes.passwords],
        "pw_at": [at for _, _, at in writes.passwords],
        "nk_kids": [k.kid for k in writes.new_keys],
        "nk_algs": [k.alg for k in writes.new_keys],
        "nk_jwks": [json.dumps(k.public_jwk) for k in writes.new_keys],
        "nk_private": [k.private_key_encrypted for k in writes.new_keys],
        "nk_created": [k.created_at for k in writes.new_keys],
        "rk_kids": list(writes.revoked_keys),
    }


def caller_columns(callers: Sequence[Caller]) -> dict[str, list[Any]]:
    """The callers as REVOKED_CALLERS's arrays, by argument name."""
    return {
        "c_jtis": [x.jti for x in callers],
        "c_sids": [x.session_id for x in callers],
        "c_users": [x.user_id for x in callers],
        "c_kids": [x.kid for x in callers],
        "c_iats": [x.iat for x in callers],
    }
