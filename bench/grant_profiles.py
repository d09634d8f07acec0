"""Where a grant's time goes, profiled apart from the runs (py-spy on the auth process, the writer's own
counters): the texts a missed target of bench/grant_speed.py carries in bench/results/latest.json."""

from __future__ import annotations

REFRESH_PROFILE = (
    "py-spy at saturation (refresh closed loop, 64 connections, ES256, 2026-12-05 17:06, ~2,170 "
    "refreshes/s, the gates in): the request tasks 49% of the auth process's samples, of which the refresh "
    "use case 14% (the ES256 signature 6%, the pool read of the token's state 3%, sealing the successor 1%), "
    "the form 2%, the access log 4% and uvicorn, Starlette and FastAPI around them most of the rest; the log "
    "writer's task 12% (its append call 7%, the batch's arrays 2%); the relay 5% (the hand-off 4%); the "
    "event loop's own scheduling 8% and its select 12%. No one part holds the missing third: the bare route "
    "pays the same framework, but no signature, no second read or write and no publish"
)
LOGIN_PROFILE = (
    "py-spy at saturation (login closed loop, 64 connections, 2026-12-05 13:53): SQLAlchemy 27% of the auth "
    "process's samples (the throttle's read 6%, the user's row 6%, the request's own transaction 7%), "
    "asyncpg 17%, the log writer 9%, the bench-only cheap argon2 check 6% (in a thread), the ES256 "
    "signature 4%: the login's reads go through SQLAlchemy in a transaction of their own, where the "
    "refresh's are one asyncpg query on the pool; that is the next step"
)
LOCK_PROFILE = (
    "the writer's own counters: the append lock is held per batch for the head, the events and the "
    "revocations only (the sessions' and refresh tokens' rows are written before it, under the gates, "
    "docs/design/write-path.md); at 2,050-2,160 refreshes/s (bench.grant_speed alone, 2026-12-05 16:46) "
    "39-42 us an event, so held about 8% of the time"
)
TWO_PROCESSES = (
    "CPU, not the lock: on this machine's 2 cores one auth process already takes ~0.85 of a core at "
    "saturation, beside PostgreSQL, wrk and the resource instance; two processes split the same cores, and "
    "each writer gets half the requests, so smaller batches each paying their fixed cost (inferred, not "
    "profiled). The append "
    "lock is held about 8% of the time (39-42 us an event at ~2,100/s), and the two-process rounds moved "
    "between 0.945x and 1.06x of one in the same runs (bench.grant_speed alone at 16:46: 1.06x and 0.945x)"
)


def why(name: str, baselines: dict[str, float]) -> str:
    """Where the time goes, for a missed grants target: this run's CPU a refresh, and the profile."""
    if name.startswith("logins"):
        return LOGIN_PROFILE
    if name.startswith("append lock"):
        return LOCK_PROFILE
    if name.startswith("two auth processes"):
        return (
            f"this run: append-lock wait p99 {baselines['lock_wait_p99_ms_two_processes']:.2f} ms with two "
            "processes; " + TWO_PROCESSES
        )
    return (
        f"this run: {baselines['refresh_cpu_ms']:.3f} ms of the auth process's CPU a refresh (relay included)"
        f" against {baselines['bare_cpu_ms_per_request']:.3f} ms a bare-route request; " + REFRESH_PROFILE
    )
