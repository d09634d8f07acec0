"""Schema migrations (Alembic), applied by `tokenlife migrate`."""

from __future__ import annotations

from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

from auth_service.db.engine import asyncpg_dsn


def _script_location() -> Path:
    packaged = Path(__file__).parents[1] / "_migrations"  # a wheel ships them inside auth_service/
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "migrations"  # a source checkout or editable install


def alembic_config(database_url: str) -> Config:
    """An Alembic config for the given database, needing no alembic.ini."""
    config = Config()
    config.set_main_option("script_location", str(_script_location()))
    config.attributes["database_url"] = database_url
    return config


async def create_database(database_url: str) -> bool:
    """Create the URL's database when it does not exist (connecting to the server's `postgres` database)."""
    url = make_url(database_url)
    name = url.database
    if not name:
        raise ValueError("the database URL names no database")
    conn = await asyncpg.connect(
        asyncpg_dsn(url.set(database="postgres").render_as_string(hide_password=False))
    )
    try:
        if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return False
        quoted = '"' + name.replace('"', '""') + '"'
        await conn.execute(f"CREATE DATABASE {quoted}")
        return True
    finally:
        await conn.close()


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the schema up to `revision`; a no-op when it is already there. Blocking: call from a thread."""
    command.upgrade(alembic_config(database_url), revision)
