"""The map from the log's events to Security Event Tokens' contents: which CAEP or SSF event each log event
becomes, about which subject, with which claims. Pure: no I/O (what a user.revoked ended is looked up by
source.py and passed in).

The map (docs/ssf.md has it with the reasons):

    session.revoked     one CAEP session-revoked for its session
    user.revoked        one CAEP session-revoked for each session it ended (open at its position)
    global.revoked      the same, for every user's sessions it ended
    credential.changed  one CAEP credential-change for the user
    ssf.verification    one SSF verification, on the one stream that asked for it
    ssf.stream_updated  one SSF stream-updated, on the one stream it is about
    session.started, token.issued, token.revoked, key.revoked: none

Subjects follow RFC 9493: the user as `iss_sub` (this issuer, the user id), a session as `opaque` (its id),
both in a `complex` subject for a session; the stream as `opaque` for a verification or a stream-updated.
Every SET carries one event (CAEP Interoperability Profile), `txn` the log event's id and
`event_timestamp` its time in the log.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from auth_service import contract as c

CAEP = "https://schemas.openid.net/secevent/caep/event-type/"
SESSION_REVOKED: Final = CAEP + "session-revoked"
CREDENTIAL_CHANGE: Final = CAEP + "credential-change"
VERIFICATION: Final = "https://schemas.openid.net/secevent/ssf/event-type/verification"
STREAM_UPDATED: Final = "https://schemas.openid.net/secevent/ssf/event-type/stream-updated"
# The SETs about a stream itself, sent on that stream only, whatever it asked for (SSF 1.0 §8.1.4, §8.1.5).
STREAM_EVENTS: Final = frozenset({VERIFICATION, STREAM_UPDATED})
# What a receiver may ask for; verification is always delivered (SSF 1.0, §8.1.4), asked for or not.
EVENTS_SUPPORTED: Final = (SESSION_REVOKED, CREDENTIAL_CHANGE)

# Why a session or credential ended, as the log says it, in the words CAEP wants: who started it
# (initiating_entity) and a non-empty reason_admin (the Interoperability Profile requires one).
_REASONS: dict[str, tuple[str, str]] = {
    "logout_session": ("user", "The user signed out of this session."),
    "logout_others": ("user", "The user signed out of their other sessions."),
    "logout_all": ("user", "The user signed out everywhere."),
    "ended_by_user": ("user", "The user ended this session from their session list."),
    "refresh_token_revoked": ("user", "The session's refresh token was revoked (RFC 7009)."),
    "password_change": ("user", "The user changed their password."),
    "refresh_token_reuse": ("policy", "A rotated refresh token was used again: the session may be stolen."),
    "operator": ("admin", "An operator revoked every session of the user."),
}


@dataclass(frozen=True)
class SetBody:
    """One SET's subject and event, before the stream's audience, jti and signature are added."""

    event_type: str
    sub_id: dict[str, Any]
    event: dict[str, Any]
    txn: str
    user_id: str | None  # for the stream's subject filter; None: about no user (a verification)
    stream_id: str | None = None  # a verification's own stream; None: for every stream


def _reason(reason: str) -> tuple[str, dict[str, str]]:
    entity, text = _REASONS.get(reason, ("system", f"Revoked by the transmitter ({reason})."))
    return entity, {"en": text}


def user_subject(issuer: str, user_id: str) -> dict[str, Any]:
    """RFC 9493 iss_sub: the user as this issuer's subject."""
    return {"format": "iss_sub", "iss": issuer, "sub": user_id}


def session_subject(issuer: str, user_id: str, session_id: uuid.UUID) -> dict[str, Any]:
    """A complex subject (SSF 1.0 §3.2): the user (iss_sub) and the session (opaque, its id)."""
    return {
        "format": "complex",
        "user": user_subject(issuer, user_id),
        "session": {"format": "opaque", "id": str(session_id)},
    }


def _timestamp(at: datetime) -> int:
    return int(at.timestamp())


def _session_revoked(
    issuer: str, event: c.Event, user_id: str, session_id: uuid.UUID, reason: str
) -> SetBody:
    entity, reason_admin = _reason(reason)
    return SetBody(
        SESSION_REVOKED,
        session_subject(issuer, user_id, session_id),
        {
            "event_timestamp": _timestamp(event.occurred_at),
            "initiating_entity": entity,
            "reason_admin": reason_admin,
        },
        str(event.event_id),
        user_id,
    )


def set_bodies(
    issuer: str, event: c.Event | c.UnknownEvent, ended: tuple[tuple[str, uuid.UUID], ...] = ()
) -> list[SetBody]:
    """The SETs one log event becomes, in order; `ended`: the (user, session) pairs a watermark ended."""
    match event:
        case c.SessionRevoked():
            return [_session_revoked(issuer, event, event.user_id, event.session_id, event.reason)]
        case c.UserRevoked() | c.GlobalRevoked():
            return [_session_revoked(issuer, event, user, sid, event.reason) for user, sid in ended]
        case c.CredentialChanged():
            entity, reason_admin = _reason(event.reason)
            body = {
                "event_timestamp": _timestamp(event.occurred_at),
                "initiating_entity": entity,
                "reason_admin": reason_admin,
                "credential_type": event.credential_type,
                "change_type": event.change_type,
            }
            return [
                SetBody(
                    CREDENTIAL_CHANGE,
                    user_subject(issuer, event.user_id),
                    body,
                    str(event.event_id),
                    event.user_id,
                )
            ]
        case c.SsfVerification():
            body = {} if event.state is None else {"state": event.state}
            subject = {"format": "opaque", "id": event.stream_id}
            return [SetBody(VERIFICATION, subject, body, str(event.event_id), None, event.stream_id)]
        case c.SsfStreamUpdated():
            body = {"status": event.status} | ({} if event.reason is None else {"reason": event.reason})
            subject = {"format": "opaque", "id": event.stream_id}
            return [SetBody(STREAM_UPDATED, subject, body, str(event.event_id), None, event.stream_id)]
        case _:
            return []


def needs_ended_sessions(event: c.Event | c.UnknownEvent) -> bool:
    """Whether the event's SETs depend on the sessions it ended (looked up in the log by source.py)."""
    return isinstance(event, c.UserRevoked | c.GlobalRevoked)


@dataclass(frozen=True)
class StreamView:
    """What decides which SETs a stream gets: its id, the events it gets, and the users it took out."""

    stream_id: str
    events_delivered: frozenset[str]
    excluded_users: frozenset[str]


def for_stream(bodies: list[SetBody], stream: StreamView) -> list[tuple[int, SetBody]]:
    """The SETs of one position a stream gets, each with its index among the position's SETs (for jti)."""
    chosen = []
    for index, body in enumerate(bodies):
        if body.event_type in STREAM_EVENTS:
            if body.stream_id == stream.stream_id:
                chosen.append((index, body))
        elif body.event_type in stream.events_delivered and body.user_id not in stream.excluded_users:
            chosen.append((index, body))
    return chosen


def set_jti(stream_id: str, position: int, index: int) -> str:
    """A SET's jti: the same for every delivery of the same SET (receivers deduplicate by it), unique per
    stream, and telling the stream which log position a poll acknowledges."""
    return f"{stream_id}-{position}-{index}"


def parse_jti(jti: str) -> tuple[str, int, int] | None:
    """(stream_id, position, index) of a jti set_jti made, or None."""
    parts = jti.rsplit("-", 2)
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit() or len(jti) > 200:
        return None
    return parts[0], int(parts[1]), int(parts[2])
