"""bench/scale.py's rounds as Results: a row per figure and round, the targets, and the sizing notes."""

from __future__ import annotations

import math
import os

from bench.results import Results, median_p99
from bench.scale_load import RATE
from bench.scale_round import Round

CPU_RATIO = 0.25
P99_RATIO = 3.0
SHARED = "taken on a 2-core machine shared with other runs; one round per transport and N"
CPU_TARGET = "broker CPU per 1,000 deliveries at N = 300: stream over queues"
STORM_TARGET = "restart storm at N = 300: snapshot requests to the auth service, {}"


def _p99_target(transport: str) -> str:
    return f"commit -> applied at the last of N, p99 at N = 300 over N = 10 ({transport})"


def _find(rounds: list[Round], transport: str, n: int) -> Round | None:
    return next((r for r in rounds if r.transport == transport and r.n == n), None)


def beyond_machine(rounds: list[Round], transport: str, n: int) -> str:
    """Why N instances on `transport` would not fit in this machine's cores ("" when they would, or when no
    round of the transport measured its instances' CPU yet)."""
    done = [r for r in rounds if r.transport == transport and r.deliveries and not math.isnan(r.window_s)]
    if not done:
        return ""
    last = done[-1]
    # Messages an instance received a second, scaled to the full rate when the load fell behind it.
    per_instance = last.deliveries / last.n / last.window_s * max(1.0, RATE / last.rate)
    need = n * per_instance * last.instance_cpu_per_delivery
    cores = os.cpu_count() or 1
    if need <= cores:
        return ""
    return (
        f"not run: {n} instances would need {need:.1f} cores for themselves ({per_instance:.0f} messages a"
        f" second each x {last.instance_cpu_per_delivery * 1e6:.0f} us of CPU a message, measured at N ="
        f" {last.n}), more than this machine's {cores}, before the broker, PostgreSQL and the auth service"
    )


def progress(r: Round) -> str:
    """One line for the terminal as each round ends."""
    if r.failed:
        return f"scale: N={r.n} {r.transport}: {r.failed}"
    p50, p99 = median_p99(r.latencies_ms) if r.latencies_ms else (math.nan, math.nan)
    return (
        f"scale: N={r.n} {r.transport}: ready {r.start_s:.1f} s,"
        f" {r.memory_per_instance / 1024:.0f} KiB/instance,"
        f" CPU {r.cpu_s:.2f} s / {r.deliveries} deliveries = {r.cpu_per_1000 * 1000:.1f} ms per 1,000,"
        f" above idle {r.cpu_per_1000_above_idle * 1000:.1f} ms, instances' CPU {r.workers_cpu_s:.1f} s over"
        f" {r.window_s:.1f} s, {r.rate:.0f} revocations/s,"
        f" p50 {p50:.1f} ms p99 {p99:.1f} ms, missing {r.missing}, gap fills {r.gap_fills};"
        f" storm {r.storm_s:.1f} s,"
        f" {r.storm_snapshots:.0f} snapshots served"
    )


HEARTBEATS = 2.0  # a second: the relay's default heartbeat interval is 0.5 s


def instances_per_core(r: Round) -> float:
    """Instances one broker core carries at 100 revocations/s: 1 / (the round's broker CPU per delivery x
    the messages an instance receives a second at that rate, heartbeats included)."""
    return 1.0 / (r.cpu_per_1000 / 1000 * (RATE + HEARTBEATS))


def record(results: Results, rounds: list[Round]) -> None:
    """Every round's rows, then the targets from the rounds that exist."""
    for r in rounds:
        case = f"scale N={r.n} {r.transport}"
        if r.failed and not r.latencies_ms:
            results.skipped(f"{case}: every figure but memory", r.failed)
            results.row(
                f"{case}: broker memory per instance",
                value=round(r.memory_per_instance / 1024, 1),
                unit="KiB",
                note="erlang:memory(total) with the instances connected (not all caught up), less before",
            )
            continue
        results.row(
            f"{case}: broker CPU per 1,000 deliveries",
            value=round(r.cpu_per_1000 * 1000, 2),
            unit="ms",
            note=f"{r.cpu_s:.2f} s of the broker's CPU over {r.window_s:.1f} s, {r.deliveries} deliveries "
            f"(events and heartbeats the instances counted); {r.cpu_per_1000_above_idle * 1000:.1f} ms above"
            f" its idle ({r.idle_cpu_rate:.3f} CPU s/s with the instances connected, heartbeats only);"
            f" ~{instances_per_core(r):.0f} instances per broker core at 100 revocations/s; the instances"
            f" spent {r.instance_cpu_per_delivery * 1e6:.0f} us of CPU per message; {SHARED}",
        )
        results.row(
            f"{case}: broker memory per instance",
            value=round(r.memory_per_instance / 1024, 1),
            unit="KiB",
            note="erlang:memory(total) with the instances caught up, less before they started, over N",
        )
        results.row(
            f"{case}: commit -> applied at the last of N",
            [ms * 1000 for ms in r.latencies_ms],
            note=f"{len(r.latencies_ms)} revocations at {r.rate:.0f}/s; {r.missing} not applied everywhere"
            f" within the drain; {r.gap_fills} gap fills over HTTP ({r.gap_fills / r.n / r.window_s:.2f} a"
            f" second an instance); first start of the N took {r.start_s:.1f} s",
        )
        c = r.storm_counters
        if r.failed:
            results.skipped(f"{case}: restart storm", r.failed)
            continue
        results.row(
            f"{case}: restart storm, every instance at once -> all ready",
            value=round(r.storm_s, 2),
            unit="s",
            note=f"{r.storm_snapshots:.0f} snapshot requests served by the auth service; the instances "
            f"counted {c.get('snapshots', 0)} snapshots, {c.get('replays', 0)} replays, "
            f"{c.get('replay_refused', 0)} replays refused; revocations flowing at 100/s",
        )
    _targets(results, rounds)


def _both(rounds: list[Round]) -> None | tuple[Round, Round]:
    """The queues and stream rounds at the largest N where both measured their CPU."""
    for n in sorted({r.n for r in rounds}, reverse=True):
        queues, stream = _find(rounds, "queues", n), _find(rounds, "stream", n)
        if queues and stream and queues.deliveries and stream.deliveries:
            return queues, stream
    return None


def _targets(results: Results, rounds: list[Round]) -> None:
    both = _both(rounds)
    if both:
        q, s = both
        results.notes[f"scale: stream over queues at N = {q.n}"] = {
            "broker CPU per 1,000 deliveries": round(s.cpu_per_1000 / q.cpu_per_1000, 3),
            "above the broker's idle": round(s.cpu_per_1000_above_idle / q.cpu_per_1000_above_idle, 3),
            "broker memory per instance": round(s.memory_per_instance / q.memory_per_instance, 2),
        }
    queues, stream = _find(rounds, "queues", 300), _find(rounds, "stream", 300)
    unmeasured = "; ".join(r.failed for r in rounds if r.failed) or "N = 300 was not run"
    if queues and stream and not queues.failed and not stream.failed:
        ratio = stream.cpu_per_1000 / queues.cpu_per_1000
        why = "" if ratio <= CPU_RATIO else _cpu_why(queues, stream)
        results.target(CPU_TARGET, round(ratio, 3), "x", f"<= {CPU_RATIO}x", ratio <= CPU_RATIO, why)
    else:
        results.target(CPU_TARGET, None, "x", f"<= {CPU_RATIO}x", None, unmeasured)
    for transport in ("stream", "queues"):
        small, large = _find(rounds, transport, 10), _find(rounds, transport, 300)
        name = _p99_target(transport)
        if small and large and small.latencies_ms and large.latencies_ms:
            p99s = median_p99(small.latencies_ms)[1], median_p99(large.latencies_ms)[1]
            ratio = p99s[1] / p99s[0]
            why = "" if ratio <= P99_RATIO else _p99_why(large, p99s)
            results.target(name, round(ratio, 2), "x", f"<= {P99_RATIO}x", ratio <= P99_RATIO, why)
        else:
            results.target(name, None, "x", f"<= {P99_RATIO}x", None, unmeasured)
    for transport, want in (("stream", "0"), ("queues", "N")):
        r = _find(rounds, transport, 300)
        name = STORM_TARGET.format(transport)
        if r is None or r.failed:
            results.target(name, None, "", f"= {want}", None, unmeasured)
            continue
        expected = 0 if transport == "stream" else r.n
        results.target(name, r.storm_snapshots, "", f"= {want}", r.storm_snapshots == expected)


def _cpu_why(queues: Round, stream: Round) -> str:
    return (
        f"stream {stream.cpu_s:.2f} s for {stream.deliveries} deliveries, queues {queues.cpu_s:.2f} s for"
        f" {queues.deliveries}; the broker's CPU includes its idle work over the window"
        f" ({stream.window_s:.1f} s) and the connections' heartbeats and credit, counted against deliveries"
    )


def _p99_why(large: Round, p99s: tuple[float, float]) -> str:
    return (
        f"p99 {p99s[0]:.1f} ms at N = 10 against {p99s[1]:.1f} ms at N = 300; over the round's"
        f" {large.window_s:.1f} s the instances' {len(large.workers.procs)} processes used"
        f" {large.workers_cpu_s:.1f} s of CPU and the broker {large.cpu_s:.1f} s, of the 2 cores' "
        f"{2 * large.window_s:.1f} s (shared with PostgreSQL, the auth services and other runs): the last of"
        f" {large.n} instances applies an event after the others in the same event loops"
    )


def skipped(results: Results, reason: str) -> None:
    """Skipped rows and unmeasured targets when the benchmark could not run."""
    results.skipped("scale (N instances, stream against queues)", reason)
    results.target(CPU_TARGET, None, "x", f"<= {CPU_RATIO}x", None)
    for transport in ("stream", "queues"):
        results.target(_p99_target(transport), None, "x", f"<= {P99_RATIO}x", None)
        results.target(STORM_TARGET.format(transport), None, "", "0" if transport == "stream" else "N", None)
