"""Where a resource service gets public signing keys: a fixed set, or a JWKS document fetched on demand."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeGuard

import jwt

__all__ = ["JwksKeySource", "KeySource", "StaticKeySource", "parse_jwks", "valid_kid"]

# A kid is looked up in a dict, never used as a path or URL; refusing anything else keeps it that way
# if a key source ever changes.
_KID_SHAPE = re.compile(r"[A-Za-z0-9._~+=@-]{1,128}")


def valid_kid(kid: object) -> TypeGuard[str]:
    """Whether a kid is a short string of safe characters."""
    return isinstance(kid, str) and _KID_SHAPE.fullmatch(kid) is not None and ".." not in kid


class KeySource(Protocol):
    """Where public signing keys come from, by kid."""

    async def get(self, kid: str) -> jwt.PyJWK | None:
        """The key with this kid, or None."""
        ...

    async def refresh(self) -> bool:
        """Refetch the keys if allowed now; True when a fetch happened and succeeded."""
        ...


def parse_jwks(jwks: Mapping[str, Any]) -> dict[str, jwt.PyJWK]:
    """The usable public signature keys of a JWKS document by kid; anything else is skipped."""
    keys = jwks.get("keys")
    if not isinstance(keys, list):
        raise ValueError("JWKS document has no 'keys' list")
    usable: dict[str, jwt.PyJWK] = {}
    for item in keys:
        if not isinstance(item, dict) or not valid_kid(item.get("kid")):
            continue
        # Only asymmetric public keys: an "oct" key would make HS* verification possible, and a private
        # key ("d") has no business in a resource service.
        if item.get("kty") not in ("RSA", "EC", "OKP") or "d" in item or item.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(item)
        except jwt.PyJWTError:
            continue
        # Checked once here rather than on every verification: a key too short to trust is not a key.
        if key.Algorithm.check_key_length(key.key) is not None:
            continue
        usable[item["kid"]] = key
    return usable


class StaticKeySource:
    """A fixed set of keys (tests, or an embedded service that owns its keys)."""

    def __init__(self, keys: Mapping[str, jwt.PyJWK]) -> None:
        self._keys = dict(keys)
        self.refreshes = 0

    @classmethod
    def from_jwks(cls, jwks: Mapping[str, Any]) -> StaticKeySource:
        """Build from a JWKS document."""
        return cls(parse_jwks(jwks))

    async def get(self, kid: str) -> jwt.PyJWK | None:
        """The key with this kid, or None."""
        return self._keys.get(kid)

    async def refresh(self) -> bool:
        """Nothing to refetch; counted so tests can see the verifier asked."""
        self.refreshes += 1
        return False


class JwksKeySource:
    """Keys from a JWKS document fetched by a callable, refetched at most once per `min_interval` seconds."""

    def __init__(
        self,
        fetch: Callable[[], Awaitable[Mapping[str, Any]]],
        *,
        min_interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._min_interval = min_interval
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._last_attempt: float | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0
        self.failures = 0
        self.last_error: str | None = None

    async def get(self, kid: str) -> jwt.PyJWK | None:
        """The key with this kid, or None; the first call loads the document."""
        if self._last_attempt is None:
            await self.refresh()
        return self._keys.get(kid)

    async def refresh(self) -> bool:
        """Refetch unless a fetch was attempted less than `min_interval` ago; keep the old keys on failure."""
        # Tokens with made-up kids are free to send; without this limit each one would cost the auth
        # service a JWKS request. Concurrent callers wait for the one fetch in flight instead of stacking.
        async with self._lock:
            now = self._clock()
            if self._last_attempt is not None and now - self._last_attempt < self._min_interval:
                return False
            self._last_attempt = now
            self.fetches += 1
            try:
                keys = parse_jwks(await self._fetch())
            except Exception as exc:  # any fetch or parse failure: keep serving with the keys we have
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                return False
            self._keys = keys
            self.last_error = None
            return True
