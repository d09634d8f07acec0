"""Schema migrations (Alembic), applied by `tokenlife migrate`."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config


def _script_location() -> Path:
    packaged = Path(__file__).parent / "_migrations"  # a wheel ships the migrations inside the package
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "migrations"  # a source checkout or editable install


def alembic_config(database_url: str) -> Config:
    """An Alembic config for the given database, needing no alembic.ini."""
    config = Config()
    config.set_main_option("script_location", str(_script_location()))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the schema up to `revision`; a no-op when it is already there. Blocking: call from a thread."""
    command.upgrade(alembic_config(database_url), revision)
