"""Password hashing with argon2id (argon2-cffi's RFC 9106 low-memory profile).

Hashing and verifying cost tens of milliseconds of CPU by design: callers on the event loop run them in a
thread (`asyncio.to_thread`). Importing this module computes nothing.
"""

from __future__ import annotations

import functools
import threading

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

MIN_LENGTH = 8
MAX_LENGTH = 1024  # argon2 takes any length; a cap keeps a giant password from being a cheap DoS

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters
_dummy_lock = threading.Lock()


@functools.cache
def _make_dummy_hash() -> str:
    return _hasher.hash("tokenlife: no such user")


def dummy_hash() -> str:
    """The hash verified against when the user does not exist: made on first use, once, from any thread.

    An unknown user then costs the same as a wrong password. Made lazily because it is a whole argon2 hash:
    at import it would slow the start of every command that merely imports this module.
    """
    with _dummy_lock:  # functools.cache alone lets two first callers both compute it
        return _make_dummy_hash()


def hash_password(password: str) -> str:
    """An argon2id hash of the password."""
    return _hasher.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    """Whether the password matches; with no stored hash, spends the same time and says no."""
    try:
        return _hasher.verify(stored_hash or dummy_hash(), password) and stored_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def check_new_password(password: str) -> None:
    """Refuse passwords that are too short or too long, with the reason."""
    if len(password) < MIN_LENGTH:
        raise ValueError(f"password must have at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise ValueError(f"password must have at most {MAX_LENGTH} characters")
