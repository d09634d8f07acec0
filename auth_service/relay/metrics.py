"""Prometheus metrics of the relay, registered on a registry the caller gives (so two relays can coexist)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

FAILURE_REASONS = ("returned", "nacked", "timeout", "connection", "channel", "database", "internal")


class RelayMetrics:
    """The relay's gauges, counters and publish-latency histogram."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.head = Gauge(
            "tokenlife_relay_head_position", "Last position in the event log.", registry=registry
        )
        self.cursor = Gauge(
            "tokenlife_relay_cursor_position", "Last position the broker confirmed.", registry=registry
        )
        self.lag = Gauge(
            "tokenlife_relay_lag_events",
            "Events in the log not yet confirmed by the broker.",
            registry=registry,
        )
        self.leader = Gauge(
            "tokenlife_relay_leader",
            "1 while this instance holds the relay's leader lock.",
            registry=registry,
        )
        self.publish_latency = Histogram(
            "tokenlife_relay_publish_latency_seconds",
            "From the appending transaction's recorded_at (database clock) to the broker's confirm.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=registry,
        )
        self.published = Counter(
            "tokenlife_relay_published_events", "Events the broker confirmed.", registry=registry
        )
        self.handed_off = Counter(
            "tokenlife_relay_handed_off_events",
            "Events sent as the log writer committed them, without waiting for NOTIFY and a read.",
            registry=registry,
        )
        self.writer_waits = Counter(
            "tokenlife_relay_writer_waits",
            "Batches the log writer of this process held back while the relay trailed its commits by more"
            " than a window.",
            registry=registry,
        )
        self.heartbeats = Counter(
            "tokenlife_relay_heartbeats", "Heartbeats the broker accepted.", registry=registry
        )
        self.reconnects = Counter(
            "tokenlife_relay_broker_reconnects",
            "Broker connections opened after the first.",
            registry=registry,
        )
        self.failures = Counter(
            "tokenlife_relay_publish_failures",
            "Failed publishes or broker sessions, by reason.",
            ["reason"],
            registry=registry,
        )
        for reason in FAILURE_REASONS:
            self.failures.labels(reason=reason)
        self._head = 0
        self._cursor = 0

    def positions(self, *, head: int | None = None, cursor: int | None = None) -> None:
        """Record the head and/or cursor and recompute the lag."""
        if head is not None:
            self._head = head
            self.head.set(head)
        if cursor is not None:
            self._cursor = cursor
            self.cursor.set(cursor)
            if cursor > self._head:
                # The broker confirmed it, so the log's head is at least there.
                self._head = cursor
                self.head.set(cursor)
        # A head read before a batch was confirmed can trail the cursor for a moment; lag is never negative.
        self.lag.set(max(0, self._head - self._cursor))
