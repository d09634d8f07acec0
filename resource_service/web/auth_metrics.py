"""Metrics of the link to the auth service: which instance is current, and how often calls failed over."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from resource_service.feed.auth_client import AuthClient

__all__ = ["AuthLinkCollector"]


class AuthLinkCollector(Collector):
    """Reads the AuthClient at scrape time."""

    def __init__(self, client: AuthClient) -> None:
        self._client = client

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """The current auth URL (as a label, value 1) and the fail-over count."""
        current = GaugeMetricFamily(
            "tokenlife_auth_url_current", "The auth instance calls go to first", labels=["url"]
        )
        current.add_metric([self._client.current_url], 1.0)
        yield current
        yield CounterMetricFamily(
            "tokenlife_auth_failovers",
            "Calls answered by another auth instance than the current one",
            value=self._client.failovers,
        )
