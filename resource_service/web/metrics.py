"""Prometheus metrics of one resource service app, in a registry of its own, read from the feed at scrape."""

from __future__ import annotations

import math
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from resource_service.check.guard import Guard
from resource_service.feed.loop import Feed
from resource_service.web.live import LiveConnections

__all__ = ["build_registry"]

# Milliseconds on the broker path, up to poll_interval and beyond on the HTTP path.
_DELAY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _FeedCollector(Collector):
    """Reads the feed, the state and the guard at scrape time: the request path updates no metric."""

    def __init__(self, feed: Feed, guard: Guard, live: LiveConnections | None) -> None:
        self._feed = feed
        self._guard = guard
        self._live = live

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """Every metric of the feed and the guard, as of now."""
        feed, state = self._feed, self._feed.state
        applied = state.applied_position
        head = max(feed.head, applied)
        yield GaugeMetricFamily("tokenlife_applied_position", "Last log position folded in", value=applied)
        yield GaugeMetricFamily("tokenlife_head_position", "Highest log position seen", value=head)
        yield GaugeMetricFamily(
            "tokenlife_lag_events", "Events between applied and head", value=head - applied
        )
        yield GaugeMetricFamily(
            "tokenlife_max_staleness_seconds",
            "The bound B: a 200 needs the head confirmed less than this long ago",
            value=feed.settings.max_staleness,
        )
        staleness = feed.staleness()
        yield GaugeMetricFamily(
            "tokenlife_staleness_seconds",
            "Seconds since the instance last knew it was at the head (-1 before it ever did)",
            value=-1.0 if math.isinf(staleness) else staleness,
        )
        yield GaugeMetricFamily(
            "tokenlife_fresh", "1 when the state is confirmed fresh", value=float(feed.freshness() == "fresh")
        )
        yield GaugeMetricFamily(
            "tokenlife_broker_live", "1 while a broker session is consuming", value=float(feed.live)
        )
        transport = GaugeMetricFamily(
            "tokenlife_transport", "1 for the transport carrying revocations", labels=["transport"]
        )
        transport.add_metric([feed.transport], 1.0)
        yield transport
        entries = GaugeMetricFamily(
            "tokenlife_live_revocations", "Live revocations held, by kind", labels=["kind"]
        )
        for kind, count in sorted(state.counts().items()):
            entries.add_metric([kind], count)
        yield entries
        rejections = CounterMetricFamily(
            "tokenlife_rejections", "Requests refused, by reason", labels=["reason"]
        )
        for reason, count in sorted(self._guard.rejections.items()):
            rejections.add_metric([reason], count)
        yield rejections
        yield CounterMetricFamily(
            "tokenlife_stale_accepted",
            "Tokens accepted while stale (fail_open)",
            value=self._guard.stale_accepted,
        )
        feed_events = CounterMetricFamily("tokenlife_feed_events", "Feed events, by kind", labels=["event"])
        for name, count in sorted(feed.counters.items()):
            feed_events.add_metric([name], count)
        yield feed_events
        crashes = CounterMetricFamily(
            "tokenlife_task_crashes", "Background task crashes, by task", labels=["task"]
        )
        for name, count in sorted(feed.crashes.items()):
            crashes.add_metric([name], count)
        yield crashes
        if self._live is not None:
            yield GaugeMetricFamily(
                "tokenlife_watched_connections",
                "Open WebSockets and event streams watched for their token",
                value=len(self._live),
            )
            ended = CounterMetricFamily(
                "tokenlife_connections_ended", "Watched connections ended, by reason", labels=["reason"]
            )
            for reason, count in sorted(self._live.ended.items()):
                ended.add_metric([reason], count)
            yield ended


def build_registry(feed: Feed, guard: Guard, live: LiveConnections | None = None) -> CollectorRegistry:
    """A registry for /metrics; a histogram in it observes the feed's apply delays through feed.on_applied."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_FeedCollector(feed, guard, live))
    delay = Histogram(
        "tokenlife_apply_delay_seconds",
        "From an event's occurred_at to its apply on this instance",
        buckets=_DELAY_BUCKETS,
        registry=registry,
    )
    feed.on_applied.append(delay.observe)  # with the apply's trace id as its exemplar, when traced
    return registry
