"""Database outages at the HTTP boundary: third-party connection errors become one DatabaseUnavailable.

SQLAlchemy and asyncpg report a server that is down, restarting or unreachable through many classes (a
refused connect, a session ended by an admin shutdown, a pool that timed out, a socket reset mid-query).
Each means the same to a client: retry soon. Anything else (a constraint violated, a bad query) is a bug and
is left alone, so it still surfaces as one.
"""

from __future__ import annotations

import asyncpg
from sqlalchemy import exc as sa_exc

from auth_service.errors import DatabaseUnavailable

__all__ = ["THIRD_PARTY", "translate"]

# The classes the app's handler is registered for; translate() decides which instances are outages.
THIRD_PARTY: tuple[type[Exception], ...] = (
    sa_exc.DBAPIError,
    sa_exc.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.InterfaceError,
    asyncpg.TargetServerAttributeNotMatched,  # a multi-host URL, and no server of it takes writes yet
    OSError,
)

_DRIVER_OUTAGES = (
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.InterfaceError,
    asyncpg.TargetServerAttributeNotMatched,  # a multi-host URL, and no server of it takes writes yet
    OSError,
)


def _causes(exc: BaseException) -> list[BaseException]:
    found: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(found) < 10:
        found.append(current)
        current = current.__cause__ or current.__context__
    return found


def translate(exc: BaseException) -> DatabaseUnavailable | None:
    """The DatabaseUnavailable an outage error stands for, or None when it is not an outage."""
    if isinstance(exc, sa_exc.TimeoutError):
        return DatabaseUnavailable("no database connection was free in time")
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated or isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)):
            return DatabaseUnavailable(f"database unreachable: {type(exc.orig).__name__}")
        if any(isinstance(cause, _DRIVER_OUTAGES) for cause in _causes(exc)):
            return DatabaseUnavailable("database unreachable")
        return None
    if isinstance(exc, _DRIVER_OUTAGES):
        return DatabaseUnavailable(f"database unreachable: {type(exc).__name__}")
    return None
