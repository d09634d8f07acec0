"""The async engine, and the plain asyncpg DSN for the connections SQLAlchemy must not pool.

A primary + standby deployment names every server in one URL, `?host=a:5432&host=b:5432` with
`target_session_attrs=read-write`: each new connection tries them in order and keeps the one that accepts
writes, so after a standby is promoted the next connection finds it, with no restart. SQLAlchemy takes the
repeated `host`; asyncpg (like libpq) wants one comma-separated list, and of a repeated one keeps only the
last value: `asyncpg_dsn` writes the list so, or every dedicated connection would know one server alone.
"""

from __future__ import annotations

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


def create_engine(database_url: str, *, pool_size: int = 10) -> AsyncEngine:
    """An engine whose connections start in READ COMMITTED, which the append protocol needs."""
    return create_async_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        isolation_level="READ COMMITTED",
    )


def asyncpg_dsn(database_url: str) -> str:
    """The same database as a libpq-style DSN, for a dedicated asyncpg connection (LISTEN, advisory locks)."""
    url = make_url(database_url).set(drivername="postgresql")
    hosts = url.query.get("host")
    if isinstance(hosts, tuple):
        url = url.update_query_dict({"host": ",".join(hosts)})
    return url.render_as_string(hide_password=False)
