"""How long things live and how long their revocations must be kept: every such rule, named, in one place.

Pure: time is passed in. The numbers hang together like this. An access token lives `access_token_ttl`
seconds from its iat, and iat may be lifted one second above the signing moment by a watermark set in that
same second (tokens.sign_access_token), so a token signed at `now` expires by `now + ttl + 1` at the latest.
A resource service accepts a token up to its leeway past exp (ResourceSettings.leeway, at most
MAX_VERIFIER_LEEWAY) and keeps a revocation in memory for its own retention past expiry; the auth side keeps a
revocation (projection, snapshot) for REVOCATION_RETENTION past expiry, longer than any of them, so no token
outlives the revocation that covers it anywhere.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

# The largest clock-skew leeway on exp any verifier may be configured with (ResourceSettings.leeway's bound).
MAX_VERIFIER_LEEWAY = timedelta(seconds=60)
# How long the auth side keeps a revocation past its expires_at, in the projection and in snapshots.
REVOCATION_RETENTION = timedelta(seconds=120)


def whole_second_floor(moment: datetime) -> datetime:
    """Round down to a whole second, as `iat` is (so watermarks compare exactly with it)."""
    return datetime.fromtimestamp(math.floor(moment.timestamp()), UTC)


def latest_access_expiry(now: datetime, access_token_ttl: int) -> datetime:
    """The latest exp of any access token signed up to `now` (iat may be lifted one second by a watermark)."""
    return now + timedelta(seconds=access_token_ttl + 1)


def may_hold_live_access_token(session_expires_at: datetime, now: datetime, access_token_ttl: int) -> bool:
    """Whether a session may still have an unexpired access token: one refreshed just before it ended."""
    return session_expires_at > now - timedelta(seconds=access_token_ttl + 1)


def beyond_every_leeway(expires_at: datetime, now: datetime) -> bool:
    """Whether no verifier accepts a token with this exp any more: revoking it tells nobody anything."""
    return expires_at < now - MAX_VERIFIER_LEEWAY


def key_publication_horizon(now: datetime, access_token_ttl: int) -> datetime:
    """Keys retired before this moment signed no token any verifier still accepts: drop them from the JWKS."""
    return now - timedelta(seconds=access_token_ttl) - MAX_VERIFIER_LEEWAY


def watermark(now: datetime, earlier: datetime | None) -> datetime:
    """A user's (or the global) not-before: past every token issued up to now, never below an earlier one.

    Every token issued so far has iat <= max(this second, an earlier watermark it was lifted to), because
    issuing holds the log's append lock that the revoker holds now; one second past that covers them all
    (a token is revoked when iat < not_before).
    """
    floor = whole_second_floor(now)
    return max(floor, earlier or floor) + timedelta(seconds=1)
