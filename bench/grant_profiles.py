"""Where a grant's time goes, profiled apart from the runs (py-spy on the auth process, the writer's own
counters): the texts a missed target of bench/grant_speed.py carries in bench/results/latest.json."""

from __future__ import annotations

REFRESH_PROFILE = (
    "py-spy at saturation (refresh closed loop, 64 connections, ES256, 2026-12-05 13:53): the refresh use "
    "case 31% of the auth process's samples, of which the ES256 signature 9-11% (it was 28% with RS256), "
    "the pool read of the token's state 10%, sealing the successor 3%; the log writer 18% (its batch's "
    "statement and arguments 8%), the relay's pump 9%; uvicorn, Starlette and FastAPI around the route "
    "most of the rest (the access log 5%)"
)
LOGIN_PROFILE = (
    "py-spy at saturation (login closed loop, 64 connections, 2026-12-05 13:53): SQLAlchemy 27% of the auth "
    "process's samples (the throttle's read 6%, the user's row 6%, the request's own transaction 7%), "
    "asyncpg 17%, the log writer 9%, the bench-only cheap argon2 check 6% (in a thread), the ES256 "
    "signature 4%: the login's reads go through SQLAlchemy in a transaction of their own, where the "
    "refresh's are one asyncpg query on the pool; that is the next step"
)
LOCK_PROFILE = (
    "the writer's own counters: the lock is held per batch, for the append function's statements (the "
    "event_log INSERT, then the session's and the refresh tokens' rows); at 1,500-1,650 refreshes/s (the "
    "runs of 2026-12-05) it was held 15-18% of the time, about 0.9 ms a batch of 8-9 events, and the auth "
    "process's CPU, not the lock, bounds the rate (two processes on the same lock served more than one)"
)


def why(name: str, baselines: dict[str, float]) -> str:
    """Where the time goes, for a missed grants target: this run's CPU a refresh, and the profile."""
    if name.startswith("logins"):
        return LOGIN_PROFILE
    if name.startswith("append lock"):
        return LOCK_PROFILE
    return (
        f"this run: {baselines['refresh_cpu_ms']:.3f} ms of the auth process's CPU a refresh (relay included)"
        f" against {baselines['bare_cpu_ms_per_request']:.3f} ms a bare-route request; " + REFRESH_PROFILE
    )
