"""Login backoff, per account and per client address, shared by every auth instance through PostgreSQL.

After `max_failures` failures within `window` seconds, each further attempt must wait 2**(n - max_failures)
seconds (capped at `max_backoff`) after the last failure. The rule (backoff.wait_seconds) is pure; the counts
live in the `login_failures` table, so N instances behind a load balancer do not multiply the allowance by N.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import case, delete, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from auth_service.accounts.backoff import BackoffRule, wait_seconds
from auth_service.db.tables import login_failures
from auth_service.errors import TooManyAttempts

# A failure on record: its key, failures, first_at, last_at.
Record = tuple[str, int, datetime, datetime]


def password_keys(email: str, address: str | None) -> tuple[str, str]:
    """The keys a password guess counts against: the account and the client address.

    Login and the password change use the same keys, so guesses through either are counted together.
    """
    return f"account:{email}", f"address:{address}"


class LoginThrottle:
    """Reads and records failed logins; the caller passes the connection (and commits).

    Keys are "account:..." or "address:..."; addresses get their own, looser rule, because many honest
    users can share one (an office behind NAT), while an account belongs to one person.
    """

    def __init__(self, rule: BackoffRule, address_rule: BackoffRule | None = None) -> None:
        self.rule = rule
        self.address_rule = address_rule or rule

    def _rule(self, key: str) -> BackoffRule:
        return self.address_rule if key.startswith("address:") else self.rule

    async def _records(self, conn: AsyncConnection, keys: tuple[str, ...]) -> list[Record]:
        rows = await conn.execute(select(login_failures).where(login_failures.c.key.in_(keys)))
        return [(r.key, r.failures, r.first_at, r.last_at) for r in rows]

    def check_records(self, records: Iterable[Record], now: datetime) -> frozenset[str]:
        """Raise TooManyAttempts (429 + Retry-After) while any record's key must wait; else the keys that
        have failures on record (a success need clear only those: most logins have none, and skip a write).
        The records are (key, failures, first_at, last_at), read by check() or by the login's one query."""
        seen = list(records)
        wait = max(
            (wait_seconds(self._rule(key), n, first, last, now) for key, n, first, last in seen), default=0
        )
        if wait:
            raise TooManyAttempts("too many failed password attempts; try again later", retry_after=wait)
        return frozenset(key for key, *_ in seen)

    async def check(self, conn: AsyncConnection, now: datetime, *keys: str) -> frozenset[str]:
        """check_records() over the keys' failures, read on `conn`."""
        return self.check_records(await self._records(conn, keys), now)

    async def failed_alone(self, engine: AsyncEngine, now: datetime, *keys: str) -> None:
        """Count a failure in a transaction of its own (the request's rolls back with the error)."""
        async with engine.begin() as own:
            await self.failed(own, now, *keys)

    async def failed(self, conn: AsyncConnection, now: datetime, *keys: str) -> None:
        """Count a failure for each key; a key whose window has passed starts again from one."""
        for key in sorted(keys):  # one order everywhere: concurrent failures cannot deadlock
            window_start = now - timedelta(seconds=self._rule(key).window)
            stmt = insert(login_failures).values(key=key, failures=1, first_at=now, last_at=now)
            expired = login_failures.c.first_at < window_start
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[login_failures.c.key],
                    set_={
                        "failures": case((expired, 1), else_=login_failures.c.failures + 1),
                        "first_at": case((expired, now), else_=login_failures.c.first_at),
                        "last_at": now,
                    },
                )
            )

    async def succeeded_alone(self, engine: AsyncEngine, key: str) -> None:
        """succeeded() in a transaction of its own."""
        async with engine.begin() as own:
            await self.succeeded(own, key)

    async def succeeded(self, conn: AsyncConnection, key: str) -> None:
        """Forget the failures of a key (the account, after a correct password)."""
        await conn.execute(delete(login_failures).where(login_failures.c.key == key))

    async def prune(self, conn: AsyncConnection, now: datetime) -> int:
        """Delete keys whose last failure left the window; returns how many."""
        longest = max(r.window + r.max_backoff for r in (self.rule, self.address_rule))
        cutoff = now - timedelta(seconds=longest)
        result = await conn.execute(delete(login_failures).where(login_failures.c.last_at < cutoff))
        return result.rowcount
