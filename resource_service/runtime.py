"""What a protected resource service runs, built and not started: the auth client, the state and its feed,
the verifier and guard, the open-connection watch and the metrics registry (protection.py starts and stops
it; the sample app and the benchmarks read it)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from looplag import LoopLag
from resource_service.check.guard import Guard
from resource_service.check.keys import JwksKeySource
from resource_service.check.state import RevocationState
from resource_service.check.verifier import TokenVerifier
from resource_service.feed.auth_client import AuthClient
from resource_service.feed.loop import Feed
from resource_service.settings import ResourceSettings
from resource_service.web.auth_metrics import AuthLinkCollector
from resource_service.web.live import LiveConnections
from resource_service.web.metrics import build_registry

if TYPE_CHECKING:
    from tracekit.tracing import Tracing

__all__ = ["Runtime", "build_runtime"]


@dataclass(frozen=True, slots=True)
class Runtime:
    """What a running Protection holds: the feed, the guard and what serves metrics and open connections."""

    settings: ResourceSettings
    client: AuthClient
    feed: Feed
    guard: Guard
    registry: CollectorRegistry
    loop_lag: LoopLag
    live: LiveConnections


def build_runtime(settings: ResourceSettings, tracing: Tracing | None = None) -> Runtime:
    """Everything a resource service runs, built and not started (nothing connects); with `tracing`, the
    feed's deliveries and applies and a revoked token's first refusal are traced (feed/traces.py)."""
    client = AuthClient(
        settings.auth_urls,
        settings.service_client_id,
        settings.service_client_secret.get_secret_value(),
        timeout=settings.http_timeout,
        # A hung auth instance is left this long after it should have answered: well inside the bound B, so
        # the next URL's answer comes before the evidence of the last one runs out.
        hedge_after=min(settings.http_timeout, settings.max_staleness / 8),
    )
    # An entry must outlive the verifier's leeway on exp, or a revoked token could be accepted again in it.
    state = RevocationState(leeway=settings.leeway + 30.0)
    keys = JwksKeySource(client.jwks, min_interval=settings.jwks_min_interval)
    verifier = TokenVerifier(
        settings.issuer, settings.audience, keys, algorithms=settings.algorithms, leeway=settings.leeway
    )
    feed = Feed(settings, state, client)
    if tracing is not None:
        from resource_service.feed.traces import FeedTraces

        feed.traces = FeedTraces(tracing.tracer, settings.exchange)
    guard = Guard(
        verifier,
        state,
        feed.freshness,
        policy=settings.stale_policy,
        introspect=client.introspect,
        retry_after=max(1, math.ceil(settings.poll_interval)),
        fresh_until=feed.tracker,
        complete_since=lambda: feed.complete_since,
        on_revoked=None if feed.traces is None else feed.traces.refused,
    )
    live = LiveConnections(guard, state, tick=min(0.25, settings.max_staleness / 8), fresh_until=feed.tracker)
    registry = build_registry(feed, guard, live)
    registry.register(AuthLinkCollector(client))
    return Runtime(settings, client, feed, guard, registry, LoopLag(registry), live)
