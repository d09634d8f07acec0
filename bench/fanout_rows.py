"""bench/fanout.py's samples as Results: the rows, the two ratio targets and the distributions."""

from __future__ import annotations

from bench.results import Results, median_p99

TARGET_RATIO = 1.5

CASE = "logout 200 -> refused on all 3 resource instances (applied, resource side)"
CASE_SENT = "logout sent -> refused on all 3 resource instances (applied, resource side)"
PROBED = "logout 200 -> 401 read from all 3 resource instances (probed)"
PROBED_SENT = "logout sent -> 401 read from all 3 resource instances (probed)"
RAW = "raw aio-pika publish (confirms) -> delivered to 3 consumer processes"
RAW_HERE = "raw aio-pika publish (confirms) -> delivered to 3 consumers in one process"
TARGET_P50 = "fanout p50: logout 200 -> refused on 3 instances, over raw publish -> 3 consumer processes"
TARGET_P99 = "fanout p99: logout 200 -> refused on 3 instances, over raw publish -> 3 consumer processes"
# Stricter: from the commit (as the benchmark's LISTEN saw it), so the relay's whole share is counted; the
# targets above start at the logout's 200, the moment the promise is counted from, by which time the relay
# of the same process has usually published already.
COMMIT_P50 = "fanout p50 from the commit: applied on 3 instances, over raw publish -> 3 consumer processes"
COMMIT_P99 = "fanout p99 from the commit: applied on 3 instances, over raw publish -> 3 consumer processes"

# The split of a sample, from the commit the benchmark's LISTEN saw (see bench/fanout.py).
_STAGES = (
    ("logout round trip", "logout sent -> its 200 at the client"),
    ("commit -> logout 200", "the auth service's answer after its commit"),
    ("commit -> first apply", "relay woken, read, published; broker; the first instance applies"),
    ("commit -> last apply", "the same, to the last of the 3 instances"),
    ("probed: last apply -> last 401 read", "a probe's wait and round trip after the last apply"),
)


def _ratio(ours: float, theirs: float) -> float:
    return round(ours / theirs, 2)


def _ms(pair: tuple[float, float]) -> str:
    return f"p50 {pair[0] / 1000:.2f} ms, p99 {pair[1] / 1000:.2f} ms"


def record(results: Results, by: dict[str, list[float]], polls: list[int]) -> None:
    """Rows for every measure, the targets on the resource-side samples against the consumer processes."""
    polls = sorted(polls)
    results.row(
        CASE,
        by["resource: from 200"],
        note="3 resource processes on the broker; ends at the last instance's apply (it refuses from then), "
        "each checked to answer 401 after; negative: applied before the client had its 200",
    )
    same = "the same samples, from just before logout was sent"
    results.row(CASE_SENT, by["resource: from sent"], note=same)
    results.row(
        PROBED,
        by["probed: from 200"],
        note=f"every third round: each instance asked as fast as one persistent connection allows (median "
        f"{polls[len(polls) // 2]}, max {polls[-1]} requests until the last 401)",
    )
    results.row(PROBED_SENT, by["probed: from sent"], note=same)
    results.row(
        RAW,
        by["raw apart"],
        note=f"same run, rounds interleaved; publish -> confirm {_ms(median_p99(by['raw apart: confirm']))}",
    )
    results.row(
        RAW_HERE,
        by["raw here"],
        note=f"same run, 3 in one process; publish -> confirm {_ms(median_p99(by['raw here: confirm']))}",
    )
    for key, what in _STAGES:
        if by.get(key):
            results.row(f"fanout split: {key}", by[key], note=what)
    ours, base = median_p99(by["resource: from 200"]), median_p99(by["raw apart"])
    for name, mine, theirs in ((TARGET_P50, ours[0], base[0]), (TARGET_P99, ours[1], base[1])):
        ratio = mine / theirs
        results.target(name, round(ratio, 2), "x", f"<= {TARGET_RATIO}x", ratio <= TARGET_RATIO)
    if by.get("commit -> last apply"):
        commit = median_p99(by["commit -> last apply"])
        first = median_p99(by["commit -> first apply"])
        why = (
            f"commit -> first apply {_ms(first)}, commit -> last apply {_ms(commit)}, raw publish -> 3"
            f" {_ms(base)} (the split of this run: the relay's share is commit -> first apply, the rest the"
            " spread from the first instance to the last)"
        )
        for name, mine, theirs in ((COMMIT_P50, commit[0], base[0]), (COMMIT_P99, commit[1], base[1])):
            ratio = mine / theirs
            met = ratio <= TARGET_RATIO
            results.target(name, round(ratio, 2), "x", f"<= {TARGET_RATIO}x", met, "" if met else why)
    here, probed = median_p99(by["raw here"]), median_p99(by["probed: from 200"])
    results.notes["fanout ratios (p50, p99)"] = {
        "resource side over raw in one process": [_ratio(ours[0], here[0]), _ratio(ours[1], here[1])],
        "probed over raw consumer processes": [_ratio(probed[0], base[0]), _ratio(probed[1], base[1])],
    }
    results.samples(f"fanout: {CASE_SENT}", by["resource: from sent"])
    results.samples(f"fanout: {RAW}", by["raw apart"])


def skipped(results: Results, reason: str) -> None:
    """Skipped rows and unmeasured targets, with the reason."""
    for case in (CASE, CASE_SENT, PROBED, PROBED_SENT, RAW, RAW_HERE):
        results.skipped(case, reason)
    for name in (TARGET_P50, TARGET_P99, COMMIT_P50, COMMIT_P99):
        results.target(name, None, "x", f"<= {TARGET_RATIO}x", None)
