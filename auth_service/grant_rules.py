"""The token endpoint's pure decisions: what presenting a refresh token means, which scopes a token gets."""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import Enum


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


def grant_scope(requested: str | None, granted: str) -> str:
    """The scopes a token gets: what was asked for and the user holds; everything held if nothing asked."""
    held = granted.split()
    if requested is None or not requested.strip():
        return " ".join(held)
    wanted = requested.split()
    return " ".join(s for s in held if s in wanted)
