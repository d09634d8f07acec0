"""One trace per revocation, on the auth side: the revoking request -> the commit (its positions) -> the
relay's publish (the trace context in the message's headers) or the events API's answer (in a header).
Imported only when tracing is on (tracekit.load); the use cases, the relay and the API hold None otherwise.

How the context crosses the log writer without touching it. A revoking request's span is current in the
request's task; the group committer (log/writer.py) commits in a task of its own, and the relay publishes
from its hand-off or, as often as not, from the NOTIFY and a read that overtake it: the request learns its
positions only after the publish. So the request says what it is about to revoke instead:

1. `appending()` (around `writer.submit`, in revoke.py) opens the commit span and registers the subjects its
   intents end (a session id, a user id, a jti) -> that span's context and the time, in `_pending` (as many
   entries as requests in flight; each request removes its own when it returns);
2. whoever meets the event first (the writer's `committed()` hook, the relay's `publish()` on the hand-off or
   the read path, the events API's `page_header()`) finds its subject there, for an event that occurred
   after the registration (a jti's: the very event the request made), and records position -> (event_id,
   context) in `_by_position`, bounded (the oldest go first);
3. later readers of the same position (a republish, another instance's long-poll) find it there, by position
   and event id, so a position a rolled-back transaction once held never lends its context to another event.

The maps live in this process: a trace goes on past the commit when the relay that publishes (or the auth
instance that answers the long-poll) is the one that committed. Another instance's relay publishes the same
event without a context, and its trace ends at the commit (docs/design/tracing.md says what would carry it).
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from opentelemetry.trace import (
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    Tracer,
    get_current_span,
    use_span,
)

from auth_service import contract as c
from auth_service.log.intents import EndSessions, Intent, RevokeToken, RevokeUser
from tracekit.page import MAX_ENTRIES, format_contexts
from tracekit.tracing import inject, remote, traceparent

__all__ = ["RevocationTraces"]

Subject = tuple[str, str]
# Positions whose context is kept for the relay and the long-polls: a few seconds of a busy log.
KEEP = 10_000


def _intent_subjects(intent: Intent) -> list[tuple[Subject, str | None]]:
    """What an intent revokes, and the event id when the request made the event itself."""
    if isinstance(intent, EndSessions):
        return [(("session", str(sid)), None) for sid in intent.session_ids]
    if isinstance(intent, RevokeUser):
        return [(("user", intent.user_id), None)]
    if isinstance(intent, RevokeToken):
        return [(("token", intent.event.jti), str(intent.event.event_id))]
    return []


# Event type -> (the kind `_intent_subjects` names, the field that holds the subject).
_SUBJECT_FIELD = {
    "session.revoked": ("session", "session_id"),
    "user.revoked": ("user", "user_id"),
    "token.revoked": ("token", "jti"),
}


def _payload_subject(payload: Mapping[str, Any]) -> Subject | None:
    """What a logged event (its wire form) revokes, named as `_intent_subjects` names it."""
    found = _SUBJECT_FIELD.get(str(payload.get("type")))
    return None if found is None else (found[0], str(payload.get(found[1])))


def _occurred(payload: Mapping[str, Any]) -> float:
    try:
        return datetime.fromisoformat(str(payload.get("occurred_at"))).timestamp()
    except ValueError:
        return 0.0


class RevocationTraces:
    """The auth side's spans of a revocation, and the map carrying their context from request to publish."""

    def __init__(self, tracer: Tracer, *, keep: int = KEEP) -> None:
        self._tracer = tracer
        self._keep = keep
        # subject -> (the commit span's context, when it was registered, the event id when known in advance)
        self._pending: dict[Subject, tuple[SpanContext, float, str | None]] = {}
        self._by_position: OrderedDict[int, tuple[str, SpanContext]] = OrderedDict()

    @contextlib.contextmanager
    def appending(self, intents: Sequence[Intent]) -> Iterator[Callable[[Sequence[c.Event]], None]]:
        """The commit span of a request's intents (a child of the request's span, current in the block), its
        subjects registered for the writer's hand-off; call the yielded function with the events appended."""
        span = self._tracer.start_span("tokenlife.log.commit", kind=SpanKind.INTERNAL)
        context = span.get_span_context()
        since = time.time()
        subjects = [subject for intent in intents for subject in _intent_subjects(intent)]
        for subject, event_id in subjects:
            self._pending[subject] = (context, since, event_id)
        try:
            with use_span(span, end_on_exit=True, record_exception=False):
                yield lambda events: _describe(span, events)
        finally:
            for subject, _ in subjects:
                entry = self._pending.get(subject)
                if entry is not None and entry[0] is context:
                    del self._pending[subject]

    def committed(self, events: Sequence[c.Event], recorded_at: datetime | None = None) -> None:
        """The log writer's on_commit hook: the position of every event a traced request is waiting for."""
        if self._pending:
            for event in events:
                if event.position is not None and event.type in _SUBJECT_FIELD:
                    self.context_for(event.position, c.to_json_dict(event))

    def context_for(self, position: int, payload: Mapping[str, Any]) -> SpanContext | None:
        """The commit span's context of the event at this position (its wire form), if it was committed traced
        here: by position once known, else by what it revokes while its request waits for it."""
        event_id = str(payload.get("event_id"))
        found = self._by_position.get(position)
        if found is not None:
            return found[1] if found[0] == event_id else None
        subject = _payload_subject(payload) if self._pending else None
        entry = self._pending.get(subject) if subject is not None else None
        if entry is None:
            return None
        context, since, expected = entry
        theirs = event_id == expected if expected is not None else _occurred(payload) >= since
        if not theirs:
            return None  # an earlier event of the same subject (a republish), not this request's
        self._remember(position, event_id, context)
        return context

    def positioned(self, events: Sequence[c.Event]) -> None:
        """Events appended in the current span's own transaction (not through the writer), before its COMMIT:
        keep their positions for the relay, which reads them once the NOTIFY wakes it."""
        context = get_current_span().get_span_context()
        if context.is_valid:
            for event in events:
                if event.position is not None:
                    self._remember(event.position, str(event.event_id), context)

    def _remember(self, position: int, event_id: str, context: SpanContext) -> None:
        known = self._by_position
        known[position] = (event_id, context)
        known.move_to_end(position)
        while len(known) > self._keep:
            known.popitem(last=False)

    def publish(
        self, position: int, payload: Mapping[str, Any], exchange: str, routing_key: str
    ) -> tuple[dict[str, str], Callable[[BaseException | None], None]] | None:
        """A producer span for one message of a traced event: the headers that carry it, and the function that
        ends it when the broker confirms (or refuses) the message. None for an event nobody traced here."""
        parent = self.context_for(position, payload)
        if parent is None:
            return None
        event_id = str(payload.get("event_id"))
        span = self._tracer.start_span(
            f"publish {exchange}",
            context=remote(parent),
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "rabbitmq",
                "messaging.operation.type": "publish",
                "messaging.operation.name": "publish",
                "messaging.destination.name": exchange,
                "messaging.rabbitmq.destination.routing_key": routing_key,
                "messaging.message.id": event_id,
                "tokenlife.position": position,
                "tokenlife.event_id": event_id,
            },
        )
        return inject(span.get_span_context()), lambda failure: _end(span, failure)

    def page_header(self, events: Sequence[dict[str, Any]]) -> str | None:
        """The events API's trace header for a page (tracekit.page): its newest traced events' contexts."""
        found: list[tuple[int, str]] = []
        for raw in reversed(events):
            position = raw.get("position")
            if isinstance(position, int):
                context = self.context_for(position, raw)
                if context is not None:
                    found.append((position, traceparent(context)))
                    if len(found) == MAX_ENTRIES:
                        break
        return format_contexts(reversed(found)) or None


def _describe(span: Span, events: Sequence[c.Event]) -> None:
    positions = [e.position for e in events if e.position is not None]
    span.set_attribute("tokenlife.positions", positions)
    span.set_attribute("tokenlife.event_ids", [str(e.event_id) for e in events])
    span.set_attribute("tokenlife.event_types", [str(e.type) for e in events])
    if len(events) == 1 and positions:
        span.set_attribute("tokenlife.position", positions[0])
        span.set_attribute("tokenlife.event_id", str(events[0].event_id))


def _end(span: Span, failure: BaseException | None) -> None:
    if failure is not None:
        span.set_status(Status(StatusCode.ERROR, type(failure).__name__))
    span.end()
