"""The dev stack's database: created and migrated, with a signing key and the demo user, found while it runs.

It lives in the data directory's embedded PostgreSQL (tokenlife/embedded_db.py), database `tokenlife`.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tokenlife import embedded_db

DATABASE = "tokenlife"
DEMO_EMAIL = "demo@example.com"
DEMO_SCOPES = "read write"


def demo_password(data_dir: Path) -> str:
    """The demo user's password: made once per data directory, kept there (readable by its owner only)."""
    path = data_dir / "demo-user.json"
    if path.exists():
        password: str = json.loads(path.read_text())["password"]
        return password
    password = secrets.token_urlsafe(12)
    path.touch(mode=0o600)
    path.write_text(json.dumps({"email": DEMO_EMAIL, "password": password}) + "\n")
    return password


async def prepare(database_url: str, password: str) -> str | None:
    """Create the database, migrate it, make sure a signing key and the demo user exist.

    Returns the kid of the signing key it generated, or None when there was one already."""
    from sqlalchemy import select, update

    from auth_service.accounts.passwords import hash_password, verify_password
    from auth_service.db.engine import create_engine
    from auth_service.db.migrate import create_database, upgrade
    from auth_service.db.tables import users
    from auth_service.settings import DEV_KEY_ENCRYPTION_KEY
    from auth_service.tokens import keys as keystore

    await create_database(database_url)
    await asyncio.to_thread(upgrade, database_url)
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            generated = await keystore.ensure_active_key(conn, DEV_KEY_ENCRYPTION_KEY)
            stored = (
                await conn.execute(select(users.c.password_hash).where(users.c.email == DEMO_EMAIL))
            ).first()
            if stored is None:
                await conn.execute(
                    users.insert().values(
                        user_id=uuid.uuid4(),
                        email=DEMO_EMAIL,
                        password_hash=hash_password(password),
                        scopes=DEMO_SCOPES,
                    )
                )
            elif not verify_password(stored.password_hash, password):
                await conn.execute(
                    update(users)
                    .where(users.c.email == DEMO_EMAIL)
                    .values(password_hash=hash_password(password))
                )
        return generated
    finally:
        await engine.dispose()


@contextmanager
def stack_database(data_dir: Path) -> Iterator[str]:
    """The URL of the dev stack's database: the running stack's, or, when none runs, its server started
    here for the moment (prepared as `tokenlife dev` would) and stopped again."""
    url = embedded_db.running_url(data_dir, DATABASE)
    owner = embedded_db.owner_pid(data_dir)
    if url is not None and owner is not None:
        yield url
        return
    if owner is not None:
        raise embedded_db.AlreadyRunning(f"the dev stack on {data_dir} (pid {owner}) is starting: try again")
    db = embedded_db.start(data_dir)
    try:
        url = db.url(DATABASE)
        asyncio.run(prepare(url, demo_password(data_dir)))
        yield url
    finally:
        db.stop()
