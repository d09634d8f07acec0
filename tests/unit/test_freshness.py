"""FreshnessTracker: evidence of being at the head, heartbeats judged by when they were sent."""

from __future__ import annotations

import math

from resource_service.freshness import FreshnessTracker


def tracker() -> FreshnessTracker:
    return FreshnessTracker(max_staleness=5.0, heartbeat_interval=1.0, started_at=100.0)


def test_unsynced_until_the_first_catch_up_then_fresh_then_stale() -> None:
    t = tracker()
    assert t.freshness(100.0) == "unsynced"
    assert math.isinf(t.staleness(100.0))
    t.at_head(101.0)
    assert t.freshness(106.0) == "fresh"
    assert t.freshness(106.5) == "stale"
    assert t.caught_up


def test_evidence_never_moves_backwards() -> None:
    t = tracker()
    t.at_head(110.0)
    t.at_head(105.0)  # an HTTP read that started earlier and finished later
    assert t.staleness(112.0) == 2.0


def test_a_heartbeat_counts_as_of_when_it_was_sent() -> None:
    t = tracker()
    sent = t.heartbeat(received=200.0, age=60.0)  # delayed a minute in transit
    assert sent == 140.0
    t.at_head(sent)
    assert t.freshness(200.0) == "stale"
    assert t.heartbeats_silent(200.0)  # a late heartbeat does not keep the HTTP poller idle


def test_a_sender_clock_ahead_counts_as_no_delay() -> None:
    t = tracker()
    assert t.heartbeat(received=200.0, age=-3.0) == 200.0
    assert not t.heartbeats_silent(201.5)
    assert t.heartbeats_silent(202.5)


def test_silence_counts_from_the_start_before_any_heartbeat() -> None:
    t = tracker()
    assert not t.heartbeats_silent(101.5)
    assert t.heartbeats_silent(102.5)
    t.restart(150.0)
    assert not t.heartbeats_silent(151.0)


def test_fresh_until_is_the_latest_evidence_plus_the_bound_and_agrees_with_freshness() -> None:
    tracker = FreshnessTracker(max_staleness=5.0, heartbeat_interval=1.0, started_at=0.0)
    assert tracker.fresh_until == -math.inf
    tracker.at_head(10.0)
    tracker.at_head(8.0)  # older evidence moves nothing
    assert tracker.fresh_until == 15.0
    assert tracker.freshness(15.0) == "fresh"
    assert tracker.freshness(15.001) == "stale"
