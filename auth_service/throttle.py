"""Login backoff, per account and per client address. Pure and in-process.

After `max_failures` failures within `window` seconds, each further attempt must wait 2**(n - max_failures)
seconds (capped at `max_backoff`) after the last failure. The state is per instance: behind a load balancer
the effective limit is multiplied by the number of instances, which still turns an online guessing attack
from thousands of tries per second into a handful per minute.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

MAX_TRACKED = 100_000  # bounded memory: the least recently failing keys are forgotten first


@dataclass
class _Failures:
    count: int
    first: float
    last: float


class LoginThrottle:
    """Counts failed logins and says how long a key must wait."""

    def __init__(
        self,
        max_failures: int = 5,
        window: float = 900.0,
        max_backoff: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_failures = max_failures
        self._window = window
        self._max_backoff = max_backoff
        self._clock = clock
        self._failures: OrderedDict[str, _Failures] = OrderedDict()

    def retry_after(self, *keys: str) -> int:
        """Seconds to wait before another attempt for any of the keys (0: go ahead)."""
        now = self._clock()
        wait = 0.0
        for key in keys:
            entry = self._failures.get(key)
            if entry is None or now - entry.first > self._window:
                continue
            excess = entry.count - self._max_failures
            if excess >= 0:
                backoff = min(self._max_backoff, 2.0**excess)
                wait = max(wait, entry.last + backoff - now)
        return math.ceil(wait) if wait > 0 else 0

    def failed(self, *keys: str) -> None:
        """Record a failed attempt for each key."""
        now = self._clock()
        for key in keys:
            entry = self._failures.pop(key, None)
            if entry is None or now - entry.first > self._window:
                entry = _Failures(0, now, now)
            entry.count += 1
            entry.last = now
            self._failures[key] = entry
        while len(self._failures) > MAX_TRACKED:
            self._failures.popitem(last=False)

    def succeeded(self, key: str) -> None:
        """Forget the failures of a key (the account, after a correct password)."""
        self._failures.pop(key, None)
