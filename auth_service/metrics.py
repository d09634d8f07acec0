"""The log writer's metrics: how long the append lock is held, per event, and the ceiling that sets.

Read from the writer at scrape time (a collector, no bookkeeping on the write path). The log's ceiling is
1 / (lock-held seconds per event): every auth process appends under the same lock, so however many there
are, the whole deployment appends at most that many events a second. Recent figures cover the writer's last
RECENT seconds (log/writer.py); the totals are counters, for rates over any window.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from auth_service.log.writer import RECENT, LogWriter


class WriterCollector(Collector):
    """Prometheus view of one process's log writer."""

    def __init__(self, writer: LogWriter) -> None:
        self._writer = writer

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        w = self._writer
        yield CounterMetricFamily(
            "tokenlife_log_batches", "Batches the log writer committed", value=float(w.batches)
        )
        yield CounterMetricFamily(
            "tokenlife_log_events_appended", "Events this process appended to the log", value=float(w.events)
        )
        yield CounterMetricFamily(
            "tokenlife_log_lock_held_seconds",
            "Seconds this process's batches held the log's append lock",
            value=w.lock_held,
        )
        batches, events, held = w.recent()
        per_event = held / events if events else 0.0
        yield GaugeMetricFamily(
            "tokenlife_log_lock_held_seconds_per_event",
            f"Append-lock seconds per event appended, over the last {RECENT:g} s (0: none appended)",
            value=per_event,
        )
        yield GaugeMetricFamily(
            "tokenlife_log_ceiling_events_per_second",
            f"1 / lock-held seconds per event over the last {RECENT:g} s: the log's ceiling (0: unknown)",
            value=1.0 / per_event if per_event else 0.0,
        )
        yield GaugeMetricFamily(
            "tokenlife_log_lock_wait_p99_seconds",
            f"p99 of the batches' waits for the append lock over the last {RECENT:g} s",
            value=w.recent_lock_wait(0.99),
        )
        yield GaugeMetricFamily(
            "tokenlife_log_events_per_batch",
            f"Events per committed batch over the last {RECENT:g} s",
            value=events / batches if batches else 0.0,
        )
