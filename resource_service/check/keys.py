"""Where a resource service gets public signing keys: a fixed set, or a JWKS document fetched on demand.

A source that cannot be read right now says so (KeysUnavailable, from refresh or get) instead of answering
"no such key": a token whose key it does not hold is then neither valid nor invalid, and the instance asks
the client to retry (503) rather than refuse it (401).
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeGuard

import jwt

from resource_service.errors import KeysUnavailable

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
        """The key with this kid, or None; KeysUnavailable when the keys cannot be read at all now."""
        ...

    async def refresh(self) -> bool:
        """Refetch the keys if allowed now; True when a fetch happened and succeeded.

        KeysUnavailable when the last fetch failed and the keys cannot be read now."""
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
    """Keys from a JWKS document fetched by a callable.

    After a fetch that worked, refetched at most once per `min_interval` seconds: tokens with made-up kids
    are free to send, and without this limit each one would cost the auth service a JWKS request. After a
    fetch that failed, the next one is allowed after a short backoff (`retry_min`, doubling up to
    `retry_max`), never the full interval: the auth service may be back a moment later, and every valid
    token signed by a key we lack waits for that fetch. Until it works, refresh() says KeysUnavailable.
    """

    def __init__(
        self,
        fetch: Callable[[], Awaitable[Mapping[str, Any]]],
        *,
        min_interval: float = 10.0,
        retry_min: float = 0.1,
        retry_max: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._min_interval = min_interval
        self._retry_min = retry_min
        self._retry_max = retry_max
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._last_success: float | None = None
        # While the last fetch failed: when the next may start, and the backoff after that one fails too.
        self._retry_at: float | None = None
        self._backoff = retry_min
        self._lock = asyncio.Lock()
        self.fetches = 0
        self.failures = 0
        self.last_error: str | None = None

    async def get(self, kid: str) -> jwt.PyJWK | None:
        """The key with this kid, or None; the first call loads the document."""
        if self._last_success is None and kid not in self._keys:
            await self.refresh()
        return self._keys.get(kid)

    async def refresh(self) -> bool:
        """Refetch unless rate-limited; keep the old keys on failure and raise KeysUnavailable."""
        # Concurrent callers wait for the one fetch in flight instead of stacking.
        async with self._lock:
            now = self._clock()
            if self._retry_at is not None:
                if now < self._retry_at:
                    raise KeysUnavailable(math.ceil(self._retry_at - now))
            elif self._last_success is not None and now - self._last_success < self._min_interval:
                return False
            self.fetches += 1
            try:
                keys = parse_jwks(await self._fetch())
            except Exception as exc:  # any fetch or parse failure: keep serving with the keys we have
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._retry_at = self._clock() + self._backoff
                self._backoff = min(self._backoff * 2, self._retry_max)
                raise KeysUnavailable(math.ceil(self._retry_at - now)) from None
            self._keys = keys
            self._last_success = self._clock()
            self._retry_at = None
            self._backoff = self._retry_min
            self.last_error = None
            return True
