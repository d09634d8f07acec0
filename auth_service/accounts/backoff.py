"""The login backoff rule, pure: how long a key must wait given its recent failures (throttle counts them)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class BackoffRule:
    """After max_failures within window seconds, wait 2**excess seconds, at most max_backoff."""

    max_failures: int = 5
    window: float = 900.0
    max_backoff: float = 900.0


def wait_seconds(
    rule: BackoffRule, failures: int, first_at: datetime, last_at: datetime, now: datetime
) -> int:
    """Seconds one key must still wait, given its failures (0: go ahead)."""
    if (now - first_at).total_seconds() > rule.window:
        return 0
    excess = failures - rule.max_failures
    if excess < 0:
        return 0
    backoff = min(rule.max_backoff, 2.0**excess)
    wait = (last_at - now).total_seconds() + backoff
    return math.ceil(wait) if wait > 0 else 0
