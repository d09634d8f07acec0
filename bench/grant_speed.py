"""Every write at the log's speed: refreshes, logins and a mixed load through the log writer, each beside a
bare-INSERT route in the same rounds; two auth processes against one; logouts on stale statistics.

`python -m bench.grant_speed` (or `run()`) measures, rounds interleaved, on one fresh database:
- refreshes/s sustained by one `tokenlife auth serve` (relay on, publishing to a bound queue), closed loop,
  64 connections (bench/log_load.py, wrk when installed), against the bare-INSERT route of bench/log_speed.py,
  and p50/p99 of each at 500 requests/s offered (open loop);
- the auth process's CPU per refresh (relay included, counted until it confirmed the round's last event)
  beside the bare route's CPU per request, and the append lock's hold per event at saturation, from the
  writer's own counters (/metrics: tokenlife_log_lock_held_seconds over tokenlife_log_events_appended);
- logins/s (closed loop) for users the benchmark registers with a deliberately cheap argon2id hash
  (t=1, m=8 KiB, written by SQL: the service only verifies), so the figure is the write path's, not argon2's;
- a mixed load, 70% refresh, 20% login, 10% logout: events/s and p99 (closed loop);
- refreshes/s with two auth processes on the database, half the connections each, against one process in
  the same round, and the append-lock wait p99 the writers report;
- refreshes/s and the auth process's CPU per refresh under each signing algorithm (RS256, EdDSA, ES256: a
  key of each made active in turn, every process waited for until it publishes it), in each round;
and, on two more databases (bench/stale_stats.py), logouts/s after 100,000 revocations were written into a
table whose statistics date from when it was empty (autovacuum off for it, never analyzed), against a fresh
table.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from contextlib import AsyncExitStack
from typing import Any

from bench import grant_feed, grant_setup, log_load, stale_stats
from bench import wrk as load
from bench.log_speed import _cpu_seconds, _mint_tokens, _relay_caught_up, _target
from bench.stack import (
    DEFAULT_AMQP_URL,
    DEFAULT_DATABASE_URL,
    _asyncpg_url,
    _database,
)

ROUNDS = 2
PER_CLOSED = 15_000  # refresh tokens a closed round may use (never one twice: a repeat is another path)
OFFERED_RATE = 500
OFFERED_SECONDS = 4
LOGOUTS = 12_000
TOKEN = "/oauth/token"
# Each signing algorithm's refresh round, in this order: the default (ES256) last, so it signs the others.
ALGORITHMS = ("RS256", "EdDSA", "ES256")


async def _grants(server_url: str, amqp_url: str) -> dict[str, Any]:
    import aio_pika

    from auth_service.tokens.keys import new_key_encryption_key

    run_id = uuid.uuid4().hex[:8]
    exchange = f"tokenlife.bench.grants.{run_id}"
    kek = new_key_encryption_key()
    per_round = 3 * PER_CLOSED + OFFERED_RATE * OFFERED_SECONDS + len(ALGORITHMS) * grant_setup.PER_ALGORITHM
    async with AsyncExitStack() as stack:
        url = await _database(stack, server_url, f"tokenlife_bench_grants_{run_id}", None)
        dsn = _asyncpg_url(server_url, url.rsplit("/", 1)[1])
        broker = await aio_pika.connect(amqp_url)
        stack.push_async_callback(broker.close)
        channel = await broker.channel()
        ex = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(f"{exchange}.q", arguments={"x-max-length": 10000})
        await queue.bind(ex, "#")
        stack.push_async_callback(channel.exchange_delete, exchange)
        stack.push_async_callback(channel.queue_delete, f"{exchange}.q")
        servers = grant_setup.Servers(stack, url, dsn, amqp_url, exchange, kek)
        (auth, auth_pid), (second, _), (bare, bare_pid) = (
            await servers.auth(),
            await servers.auth(),
            await log_load.serve_bare(stack, dsn),
        )
        # Sessions for the logouts first (they are numbered from the log's start), then the refresh tokens.
        logouts = [f"bearer:{t}" for t in await _mint_tokens(url, kek, auth, LOGOUTS)]
        lines = await grant_setup.prepare(dsn, url, kek, per_round * ROUNDS + 2000)
        wrk = load.available()
        refresh = lines["refresh"]
        warm, refresh = refresh[:2000], refresh[2000:]
        await log_load.closed_round(wrk, auth, TOKEN, warm[:1000])
        await log_load.closed_round(wrk, second, TOKEN, warm[1000:])
        await log_load.closed_round(wrk, bare, log_load.BARE, grant_setup.bearer(warm))
        # A resource instance subscribed once the setup's events are published (bench/grant_feed.py).
        await _relay_caught_up(dsn)
        resource = await grant_feed.start(stack, auth, amqp_url, exchange)
        on_broker_s = await grant_feed.on_broker(resource)

        async def refresh_round(tokens: list[str]) -> dict[str, Any]:
            before = await grant_feed.counters(resource)
            result = await log_load.closed_round(wrk, auth, TOKEN, tokens)
            after = await grant_feed.counters(resource)
            return result | grant_feed.during(before, after, result.get("seconds", log_load.CLOSED_SECONDS))

        out: dict[str, list[dict[str, Any]]] = {}
        cpu = {"refresh": [0.0, 0], "bare": [0.0, 0]} | {alg: [0.0, 0] for alg in ALGORITHMS}

        def keep(name: str, result: dict[str, Any]) -> None:
            out.setdefault(name, []).append(result)
            rate, p99 = result.get("rate", 0), result.get("p99_ms", 0)
            print(f"{name}: {rate:.0f}/s p99 {p99:.1f} ms", file=sys.stderr)  # noqa: T201

        for r in range(ROUNDS):
            mine = refresh[r * per_round : (r + 1) * per_round]
            closed, two, mixed_r, offered, by_algorithm = (
                mine[:PER_CLOSED],
                mine[PER_CLOSED : 2 * PER_CLOSED],
                mine[2 * PER_CLOSED : 3 * PER_CLOSED],
                mine[3 * PER_CLOSED : 3 * PER_CLOSED + OFFERED_RATE * OFFERED_SECONDS],
                mine[3 * PER_CLOSED + OFFERED_RATE * OFFERED_SECONDS :],
            )
            # Refreshes under each signing algorithm, the default last (it signs the rest of the round).
            for i, alg in enumerate(ALGORITHMS):
                await grant_setup.use_algorithm(url, kek, [auth, second], alg)
                part = by_algorithm[i * grant_setup.PER_ALGORITHM : (i + 1) * grant_setup.PER_ALGORITHM]
                cpu0 = _cpu_seconds(auth_pid)
                result = await refresh_round(part)
                cpu[alg][0] += _cpu_seconds(auth_pid) - cpu0
                cpu[alg][1] += result["statuses"].get("200", 0)
                keep(f"refresh {alg}", result)
            before, cpu0 = await grant_setup.metrics(auth), _cpu_seconds(auth_pid)
            result = await refresh_round(closed)
            after = await grant_setup.metrics(auth)
            result |= await _relay_caught_up(dsn)
            cpu["refresh"][0] += _cpu_seconds(auth_pid) - cpu0
            cpu["refresh"][1] += result["statuses"].get("200", 0)
            events = after["tokenlife_log_events_appended"] - before["tokenlife_log_events_appended"]
            held = after["tokenlife_log_lock_held_seconds"] - before["tokenlife_log_lock_held_seconds"]
            result["lock_held_us_per_event"] = 1e6 * held / max(1.0, events)
            keep("refresh", result)
            cpu0 = _cpu_seconds(bare_pid)
            result = await log_load.closed_round(wrk, bare, log_load.BARE, grant_setup.bearer(closed))
            cpu["bare"][0] += _cpu_seconds(bare_pid) - cpu0
            cpu["bare"][1] += result["statuses"].get("200", 0)
            keep("bare", result)
            keep("login", await log_load.closed_round(wrk, auth, TOKEN, lines["login"]))
            logins = lines["login"]
            mixed = [  # of every 10 requests: 7 refreshes, 2 logins, 1 logout
                mixed_r[i] if i % 10 < 7 else logins[i % len(logins)] if i % 10 < 9 else logouts.pop()
                for i in range(min(len(mixed_r), 10 * len(logouts) // 2))
            ]
            keep("mixed", await log_load.closed_round(wrk, auth, "/v1/auth/logout", mixed))
            half = len(two) // 2
            one_of_two, other_of_two = await asyncio.gather(
                log_load.closed_round(wrk, auth, TOKEN, two[:half], connections=32),
                log_load.closed_round(wrk, second, TOKEN, two[half:], connections=32),
            )
            keep(
                "two processes",
                {"rate": one_of_two["rate"] + other_of_two["rate"], "parts": [one_of_two, other_of_two]},
            )
            keep("refresh@", await log_load.load(auth, TOKEN, offered, OFFERED_RATE))
            keep("bare@", await log_load.load(bare, log_load.BARE, grant_setup.bearer(offered), OFFERED_RATE))
        waits = await grant_setup.metrics(auth), await grant_setup.metrics(second)
        return {
            "results": out,
            "cpu_ms": {k: 1000 * v[0] / max(1, v[1]) for k, v in cpu.items()},
            "lock_wait_p99_ms": max(
                1000 * w.get("tokenlife_log_lock_wait_p99_seconds", float("nan")) for w in waits
            ),
            "on_broker_s": on_broker_s,
        }


def _rate(rows: list[dict[str, Any]]) -> float:
    return min(float(r["rate"]) for r in rows)


async def _run() -> dict[str, Any]:
    server_url = os.environ.get("TOKENLIFE_BENCH_DATABASE_URL", DEFAULT_DATABASE_URL)
    amqp_url = os.environ.get("TOKENLIFE_BENCH_AMQP_URL", DEFAULT_AMQP_URL)
    grants = await _grants(server_url, amqp_url)
    stale = await stale_stats.run(server_url, ROUNDS)
    res = grants["results"]
    refresh, bare = _rate(res["refresh"]), _rate(res["bare"])
    ratio = min(a["rate"] / b["rate"] for a, b in zip(res["refresh"], res["bare"], strict=True))
    p99 = max(r["p99_ms"] for r in res["refresh@"])
    login = _rate(res["login"])
    held = max(r["lock_held_us_per_event"] for r in res["refresh"])
    two = min(t["rate"] / o["rate"] for t, o in zip(res["two processes"], res["refresh"], strict=True))
    stale_ratio = min(s / f for s, f in zip(stale["stale"], stale["fresh"], strict=True))
    cpu = grants["cpu_ms"]
    # Every refresh round the resource instance watched: the main closed loop and one per algorithm.
    watched = [r for name in ("refresh", *(f"refresh {alg}" for alg in ALGORITHMS)) for r in res[name]]
    long_polls = grant_feed.total(watched, "long_polls")
    rows = [
        {"case": f"{name} round {i + 1}", **{k: v for k, v in r.items() if k != "parts"}}
        for name, runs in res.items()
        for i, r in enumerate(runs)
    ] + [
        {"case": f"logouts, {name} revocations round {i + 1}", "rate": v}
        for name, vs in stale.items()
        for i, v in enumerate(vs)
    ]
    targets = [
        _target(
            "refreshes/s sustained (closed loop, one process, worst round)",
            refresh,
            "1/s",
            ">= 1500",
            refresh >= 1500,
        ),
        _target(
            "refreshes/s over the bare-INSERT route's, same round (worst)", ratio, "x", ">= 0.5", ratio >= 0.5
        ),
        _target("refresh p99 at 500/s offered (worst round)", p99, "ms", "<= 20", p99 <= 20),
        _target(
            "logins/s (cheap bench-only hash, closed loop, worst round)",
            login,
            "1/s",
            ">= 1000",
            login >= 1000,
        ),
        _target(
            "append lock held per event at saturation (refresh rounds, worst)",
            held,
            "us",
            "<= 50",
            held <= 50,
        ),
        _target("two auth processes over one, refreshes/s (worst round)", two, "x", ">= 1.0", two >= 1.0),
        _target(
            "logouts/s after 100k revocations on stale statistics over a fresh table (worst)",
            stale_ratio,
            "x",
            ">= 0.9",
            stale_ratio >= 0.9,
        ),
        _target(
            "fallback long-polls by a resource instance during saturated refresh rounds (all rounds)",
            long_polls,
            "requests",
            "= 0",
            long_polls == 0,
        ),
    ]
    return {
        "rows": rows,
        "baselines": {
            "bare_insert_rate": bare,
            "bare_cpu_ms_per_request": cpu["bare"],
            "refresh_cpu_ms": cpu["refresh"],
            "bare_p99_ms_at_500": max(r["p99_ms"] for r in res["bare@"]),
            "mixed_events_per_s": _rate(res["mixed"]),
            "mixed_p99_ms": max(r["p99_ms"] for r in res["mixed"]),
            "lock_wait_p99_ms_two_processes": grants["lock_wait_p99_ms"],
            **{f"refresh_rate_{alg}": _rate(res[f"refresh {alg}"]) for alg in ALGORITHMS},
            **{f"refresh_cpu_ms_{alg}": cpu[alg] for alg in ALGORITHMS},
            "resource_gap_fills_in_refresh_rounds": grant_feed.total(watched, "gap_fills"),
            "resource_heartbeats_in_refresh_rounds": grant_feed.total(watched, "heartbeats"),
            "resource_heartbeats_due_in_refresh_rounds": grant_feed.total(watched, "heartbeats_due"),
            "resource_on_broker_wait_s": grants["on_broker_s"],
        },
        "targets": targets,
    }


def run() -> dict[str, Any]:
    """Measure, print the table, and return the rows, baselines and targets."""
    figures = asyncio.run(_run())
    for row in figures["rows"]:
        keys = (
            "p50_ms",
            "p99_ms",
            "statuses",
            "lock_held_us_per_event",
            "long_polls",
            "gap_fills",
            "heartbeats",
        )
        extra = {k: row[k] for k in keys if k in row}
        print(f"{row['case']:<40} {row['rate']:>8.0f}/s  {extra}")  # noqa: T201
    for key, value in figures["baselines"].items():
        print(f"baseline {key}: {value:.3f}")  # noqa: T201
    for t in figures["targets"]:
        verdict = "MET " if t["met"] else "MISS"
        print(f"{verdict} {t['name']}: {t['value']} {t['unit']} (target {t['target']})")  # noqa: T201
    return figures


if __name__ == "__main__":
    # `python -m bench.grant_speed --write PATH`: the figures, the machine and its load, as JSON too.
    measured = run()
    if sys.argv[1:2] == ["--write"] and len(sys.argv) > 2:
        import json
        import platform
        from datetime import UTC, datetime

        measured |= {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "load_average_at_end": os.getloadavg(),
        }
        with open(sys.argv[2], "w") as out:
            json.dump(measured, out, indent=1, default=str)
