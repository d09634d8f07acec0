"""The token endpoint's pure decision of which scopes a token gets (what presenting a refresh token means is
log/intents.decide_rotation, decided under the log's lock)."""

from __future__ import annotations

from collections.abc import Iterable

from auth_service.errors import InvalidScope


def grant_scope(requested: str | None, held: str, allowed: Iterable[str]) -> str:
    """RFC 6749 §3.3: what was asked for (all if nothing), narrowed to the user's and the client's scopes.

    Raises InvalidScope when scopes were asked for and none of them can be granted, so a client never gets a
    token silently missing everything it wanted.
    """
    may = set(allowed)
    grantable = [s for s in dict.fromkeys(held.split()) if s in may]
    if requested is None or not requested.strip():
        return " ".join(grantable)
    wanted = set(requested.split())
    granted = " ".join(s for s in grantable if s in wanted)
    if not granted:
        raise InvalidScope("none of the requested scopes can be granted to this user and client")
    return granted
