"""Adding a user, as the operator's `tokenlife user add` and the dev stack's `tokenlife dev user add` do.

The email is checked and normalised by email-validator (syntax only: no DNS lookup, so it works offline and
says the same thing every time), then lower-cased whole, as the login lowers what it is given.
"""

from __future__ import annotations

import asyncio
import uuid

from email_validator import EmailNotValidError, validate_email
from sqlalchemy.exc import IntegrityError

from auth_service.accounts.passwords import hash_password
from auth_service.db.engine import create_engine
from auth_service.db.tables import users

__all__ = ["UserExists", "add_user", "normalise_email"]


class UserExists(Exception):
    """A user with this email is registered already."""


def normalise_email(raw: str) -> str:
    """The email as stored and looked up; ValueError saying what is wrong with it, when it is not one."""
    try:
        checked = validate_email(raw.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(f"{raw.strip()!r} is not an email address: {exc}") from None
    return checked.normalized.lower()


async def add_user(database_url: str, email: str, password: str, scopes: str) -> uuid.UUID:
    """Register a user (email already normalised, password already checked); UserExists if taken."""
    password_hash = await asyncio.to_thread(hash_password, password)
    engine = create_engine(database_url, pool_size=1)
    try:
        user_id = uuid.uuid4()
        async with engine.begin() as conn:
            await conn.execute(
                users.insert().values(
                    user_id=user_id, email=email, password_hash=password_hash, scopes=scopes
                )
            )
        return user_id
    except IntegrityError:
        raise UserExists(f"a user with email {email} exists already") from None
    finally:
        await engine.dispose()
