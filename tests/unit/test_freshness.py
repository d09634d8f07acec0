"""FreshnessTracker: evidence of being at the head, heartbeats judged by when they were sent."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from resource_service.freshness import FreshnessTracker, read_as_of


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


def test_a_held_answer_proves_the_head_as_of_send_plus_hold() -> None:
    # Sent at 100, held 25 s by the server, back at 25.3: at the head as of 125, not as of 100.
    assert read_as_of(100.0, 125.3, 25.0) == 125.0
    assert read_as_of(100.0, 100.2, 0.0) == 100.0
    assert read_as_of(100.0, 100.2, None) == 100.0  # an older server that does not say: the send time


@given(
    sent=st.floats(0, 1e6),
    to_server=st.floats(0, 60),
    held=st.floats(0, 30),
    back=st.floats(0, 60),
    claimed=st.floats(0, 1e3) | st.none(),
)
def test_the_claimed_time_is_never_after_the_read_nor_after_the_answer(
    sent: float, to_server: float, held: float, back: float, claimed: float | None
) -> None:
    # Whatever the network delays: the server read at sent + to_server + held, the answer came back after.
    read_at = sent + to_server + held
    received = read_at + back
    assert read_as_of(sent, received, held) <= read_at
    # A server that claims more hold than passed can never push the evidence past the answer's arrival.
    assert read_as_of(sent, received, claimed) <= received


def test_fresh_until_is_the_latest_evidence_plus_the_bound_and_agrees_with_freshness() -> None:
    tracker = FreshnessTracker(max_staleness=5.0, heartbeat_interval=1.0, started_at=0.0)
    assert tracker.fresh_until == -math.inf
    tracker.at_head(10.0)
    tracker.at_head(8.0)  # older evidence moves nothing
    assert tracker.fresh_until == 15.0
    assert tracker.freshness(15.0) == "fresh"
    assert tracker.freshness(15.001) == "stale"
