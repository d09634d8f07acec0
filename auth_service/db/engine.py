"""The async engine, and the plain asyncpg DSN for the connections SQLAlchemy must not pool."""

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
    return url.render_as_string(hide_password=False)
