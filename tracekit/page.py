"""The trace contexts of an events API answer: one response header, `position=traceparent` pairs.

A page carries many events, each of its own trace, and the page itself belongs to no revocation, so the
contexts go beside it in a header of their own rather than in the body (the event contract carries no
tracing field). The auth service writes it only for the events it committed traced, at most
`MAX_ENTRIES` of them; a resource instance takes what parses and ignores the rest. No OpenTelemetry import.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["HEADER", "MAX_ENTRIES", "format_contexts", "parse_contexts"]

HEADER = "tokenlife-trace-context"
MAX_ENTRIES = 16
# A traceparent is 55 characters; a position at most 19 digits: anything longer is not ours.
_MAX_ENTRY = 80


def format_contexts(entries: Iterable[tuple[int, str]]) -> str:
    """The header's value for (position, traceparent) pairs."""
    return ",".join(f"{position}={parent}" for position, parent in entries)


def parse_contexts(value: str | None) -> dict[int, str]:
    """position -> traceparent from the header's value; malformed entries are skipped, never an error (the
    traceparent itself is checked where it is used, by the W3C propagator)."""
    if not value:
        return {}
    found: dict[int, str] = {}
    for entry in value.split(",", MAX_ENTRIES)[:MAX_ENTRIES]:
        position, sep, parent = entry.strip().partition("=")
        if sep and position.isdigit() and len(entry) <= _MAX_ENTRY and len(position) <= 19:
            found[int(position)] = parent.strip()
    return found
