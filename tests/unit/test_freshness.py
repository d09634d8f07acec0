"""FreshnessTracker: evidence of being at the head, heartbeats judged by when they were sent."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from resource_service.check.freshness import FreshnessTracker, loop_lag, read_as_of


def tracker() -> FreshnessTracker:
    return FreshnessTracker(max_staleness=5.0, heartbeat_interval=1.0, started_at=100.0)


def test_unsynced_until_the_first_catch_up_then_fresh_then_stale() -> None:
    t = tracker()
    assert t.freshness(100.0) == "unsynced"
    assert math.isinf(t.staleness(100.0))
    t.at_head(101.0)
    assert t.freshness(105.9) == "fresh"
    assert t.freshness(106.0) == "stale"  # fresh only while confirmed *less* than the bound ago
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
    assert tracker.freshness(14.999) == "fresh"
    assert tracker.freshness(15.0) == "stale"  # fresh while less than the bound old, not at it


def test_fresh_until_drops_with_a_stall_and_returns_with_evidence_from_after_it() -> None:
    t = tracker()
    t.at_head(100.0)
    assert t.fresh_until == 105.0
    assert t.loop_stalled(lag=5.5, noticed=104.5)
    assert t.fresh_until == -math.inf  # the warm path must not accept on voided evidence
    t.at_head(104.2)  # before the stall was noticed: still void
    assert t.fresh_until == -math.inf
    t.at_head(104.5)
    assert t.fresh_until == 109.5


def test_loop_lag_is_how_late_a_tick_woke() -> None:
    assert loop_lag(previous=10.0, now=10.25, interval=0.25) == 0.0
    assert loop_lag(previous=10.0, now=13.25, interval=0.25) == 3.0
    assert loop_lag(previous=10.0, now=10.1, interval=0.25) == 0.0  # never negative


def test_a_stall_longer_than_the_bound_voids_evidence_from_before_it_was_noticed() -> None:
    t = tracker()
    t.at_head(100.0)
    # A heartbeat sent during the stall, handled before the stall watch noticed it: it looks recent.
    t.at_head(104.0)
    assert t.loop_stalled(lag=5.5, noticed=104.5)
    assert t.freshness(104.5) == "stale"
    t.at_head(104.2)  # an answer to a read sent before the stall was noticed: still void
    assert t.freshness(104.6) == "stale"
    t.at_head(104.5)  # a head confirmed from the moment it was noticed on counts again
    assert t.freshness(104.6) == "fresh"
    assert t.stalls == 1


def test_a_stall_within_the_bound_voids_nothing() -> None:
    t = tracker()
    t.at_head(100.0)
    assert not t.loop_stalled(lag=5.0, noticed=101.0)
    assert t.freshness(101.0) == "fresh"
    assert t.stalls == 0


@given(
    evidence=st.lists(st.floats(min_value=0, max_value=1000), min_size=1, max_size=20),
    noticed=st.floats(min_value=0, max_value=1000),
    now=st.floats(min_value=0, max_value=1000),
)
def test_after_a_stall_fresh_only_on_evidence_from_after_it(
    evidence: list[float], noticed: float, now: float
) -> None:
    t = FreshnessTracker(max_staleness=2.0, heartbeat_interval=0.5, started_at=0.0)
    t.loop_stalled(lag=3.0, noticed=noticed)
    for as_of in evidence:
        t.at_head(as_of)
    if t.freshness(now) == "fresh":
        assert any(noticed <= as_of and now - as_of < 2.0 for as_of in evidence)
