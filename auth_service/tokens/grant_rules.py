"""The token endpoint's pure decisions: what presenting a refresh token means, which scopes a token gets."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from enum import Enum

from auth_service.errors import InvalidScope


class Rotation(Enum):
    """What presenting a refresh token means, decided under its row lock."""

    ROTATE = "rotate"  # the current token of its family: replace it
    CONCURRENT = "concurrent"  # rotated moments ago (another tab): give this caller a sibling
    REUSE = "reuse"  # rotated long ago: stolen or replayed, end the session


def decide_rotation(rotated_at: datetime | None, now: datetime, grace: timedelta) -> Rotation:
    """The refresh grace rule, for the token endpoint and introspection alike: usable unless REUSE."""
    if rotated_at is None:
        return Rotation.ROTATE
    return Rotation.CONCURRENT if now - rotated_at <= grace else Rotation.REUSE


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
