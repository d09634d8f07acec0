"""One trace per revocation, on a resource instance: its delivery and apply, then the first refusal of a token
it revoked. Imported only when tracing is on (tracekit.load); the feed and the guard hold None otherwise.

- Each event that arrives with a trace context (a message's headers on the broker or the stream, the events
  API's header on long-poll) and changes or advances the state gets a consumer span `process <exchange>`,
  a child of that context (the relay's publish, or the commit for long-poll), from the moment it was received
  to its apply, with its position, event id and transport. An event without one (committed elsewhere, or
  untraced) gets no span: a root trace per event would be noise, not an answer.
- The first request this instance refuses because of that revocation gets a span `tokenlife.first_refusal`
  in the revocation's trace, a child of the apply, linked to the refused request's own span (its trace is
  the client's, and the refusal belongs to both). Later refusals of the same revocation are not traced.
- The apply's trace id goes with the propagation delay to the histogram as an exemplar (web/metrics.py).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import OrderedDict

from opentelemetry.trace import Link, SpanContext, SpanKind, Tracer, get_current_span

from auth_service.contract import (
    GLOBAL_SUBJECT,
    Event,
    GlobalRevoked,
    KeyRevoked,
    SessionRevoked,
    TokenRevoked,
    UnknownEvent,
    UserRevoked,
)
from resource_service.check.state import ApplyResult, RevocationReason
from resource_service.check.verifier import Principal
from resource_service.feed.auth_client import Delivery
from tracekit.tracing import extract, remote, trace_id

__all__ = ["FeedTraces"]

log = logging.getLogger("tokenlife.tracing")

# Revocations whose first refusal is still awaited here; the oldest go first past this.
KEEP = 10_000
_instances = itertools.count(1)


def _subject(event: Event | UnknownEvent) -> tuple[RevocationReason, str] | None:
    if isinstance(event, TokenRevoked):
        return RevocationReason.TOKEN, event.jti
    if isinstance(event, SessionRevoked):
        return RevocationReason.SESSION, str(event.session_id)
    if isinstance(event, UserRevoked):
        return RevocationReason.USER, event.user_id
    if isinstance(event, KeyRevoked):
        return RevocationReason.KEY, event.kid
    if isinstance(event, GlobalRevoked):
        return RevocationReason.GLOBAL, GLOBAL_SUBJECT
    return None


def _refused_subject(principal: Principal, reason: RevocationReason) -> str:
    facts = principal.facts
    if reason is RevocationReason.TOKEN:
        return facts.jti
    if reason is RevocationReason.SESSION:
        return facts.sid
    if reason is RevocationReason.USER:
        return facts.sub
    if reason is RevocationReason.KEY:
        return facts.kid
    return GLOBAL_SUBJECT


class FeedTraces:
    """The spans of one resource instance; `instance` names it among the others in a trace."""

    def __init__(
        self, tracer: Tracer, exchange: str, *, instance: str | None = None, keep: int = KEEP
    ) -> None:
        self._tracer = tracer
        self._exchange = exchange
        self.instance = instance or f"resource-{next(_instances)}"
        self._keep = keep
        # (reason, subject) -> (the apply's span context, its position, when it was applied, ns)
        self._awaiting: OrderedDict[tuple[RevocationReason, str], tuple[SpanContext, int, int]] = (
            OrderedDict()
        )

    def processed(
        self, event: Event | UnknownEvent, result: ApplyResult, via: Delivery, now_monotonic: float
    ) -> dict[str, str] | None:
        """The consumer span of an event just applied, from its receipt (`via`: its carrier, when and over
        what it came) to now; the exemplar for the delay histogram ({"trace_id": ...}), or None when the event
        came without a usable context."""
        carrier, received, transport = via
        parent = extract(carrier)
        if parent is None:
            return None
        waited = now_monotonic - received
        now = time.time_ns()
        position = event.position or 0
        event_id = str(event.event_id)
        span = self._tracer.start_span(
            f"process {self._exchange}",
            context=parent,
            kind=SpanKind.CONSUMER,
            start_time=now - int(max(0.0, waited) * 1e9),
            attributes={
                "messaging.system": "http" if transport == "long_poll" else "rabbitmq",
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": self._exchange,
                "messaging.message.id": event_id,
                "tokenlife.position": position,
                "tokenlife.event_id": event_id,
                "tokenlife.event_type": str(event.type),
                "tokenlife.transport": transport,
                "tokenlife.instance": self.instance,
                "tokenlife.apply_result": result.value,
            },
        )
        span.end(end_time=now)
        context = span.get_span_context()
        subject = _subject(event) if result is ApplyResult.CHANGED else None
        if subject is not None:
            awaiting = self._awaiting
            awaiting[subject] = (context, position, now)
            awaiting.move_to_end(subject)
            while len(awaiting) > self._keep:
                awaiting.popitem(last=False)
        return {"trace_id": trace_id(context)} if context.trace_flags.sampled else None

    def refused(self, principal: Principal, reason: RevocationReason) -> None:
        """The guard's hook when it refuses a revoked token: the first refusal of a traced revocation."""
        try:
            self._first_refusal(principal, reason)
        except Exception:  # a span is never worth a refusal that fails: it is answered all the same
            log.exception("tracing the refusal of a revoked token failed")

    def _first_refusal(self, principal: Principal, reason: RevocationReason) -> None:
        found = self._awaiting.pop((reason, _refused_subject(principal, reason)), None)
        if found is None:
            return
        applied, position, applied_at = found
        now = time.time_ns()
        request = get_current_span().get_span_context()
        span = self._tracer.start_span(
            "tokenlife.first_refusal",
            context=remote(applied),
            kind=SpanKind.INTERNAL,
            links=[Link(request)] if request.is_valid else None,
            start_time=now,
            attributes={
                "tokenlife.position": position,
                "tokenlife.reason": reason.value,
                "tokenlife.instance": self.instance,
                "tokenlife.refused_after_apply_ms": round((now - applied_at) / 1e6, 3),
            },
        )
        span.end(end_time=now)
