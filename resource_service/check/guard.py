"""The per-request check, framework-free: Authorization header in, unrevoked Principal out."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Literal, Protocol

from auth_service.contract.bearer import MAX_HEADER_BYTES, MalformedBearer, parse_bearer
from resource_service.check.state import RevocationReason, RevocationState
from resource_service.check.verifier import Principal, TokenVerifier
from resource_service.errors import (
    InsufficientScope,
    InvalidRequest,
    KeysUnavailable,
    MissingToken,
    ResourceError,
    StateStale,
    TokenRevoked,
)

__all__ = ["Freshness", "Guard", "Introspect", "Policy", "bearer_token"]

logger = logging.getLogger(__name__)

# "unsynced": the state never reached the head, so it may lack revocations of any age, not only recent ones.
Freshness = Literal["fresh", "stale", "unsynced"]
Policy = Literal["fail_closed", "fail_open", "introspect"]
# Asks the auth service (RFC 7662) whether the token is still active; True means active.
Introspect = Callable[[str], Awaitable[bool]]
# Told of each token refused as revoked, before the refusal is raised (a first refusal's span, if traced).
OnRevoked = Callable[[Principal, RevocationReason], None]


class FreshUntil(Protocol):
    """Knows the monotonic time up to which the state counts as fresh (FreshnessTracker)."""

    fresh_until: float


def bearer_token(authorization: str | None, max_bytes: int = MAX_HEADER_BYTES) -> str:
    """The token of a "Bearer <token>" header value; MissingToken or InvalidRequest otherwise."""
    try:
        token = parse_bearer(authorization, max_bytes)
    except MalformedBearer as exc:
        raise InvalidRequest(str(exc)) from None
    if token is None:
        raise MissingToken()
    return token


def _rejection_reason(err: ResourceError) -> str:
    if isinstance(err, TokenRevoked):
        return err.reason
    if isinstance(err, StateStale):
        return "state_stale"
    if isinstance(err, KeysUnavailable):
        return "keys_unavailable"
    return err.body_code


class Guard:
    """Verifies the bearer token, checks revocation on every call, applies the freshness policy and scopes."""

    def __init__(
        self,
        verifier: TokenVerifier,
        state: RevocationState,
        freshness: Callable[[], Freshness],
        *,
        policy: Policy = "fail_closed",
        introspect: Introspect | None = None,
        retry_after: int = 5,
        max_header_bytes: int = MAX_HEADER_BYTES,
        fresh_until: FreshUntil | None = None,
        clock: Callable[[], float] = time.monotonic,
        complete_since: Callable[[], float] | None = None,
        on_revoked: OnRevoked | None = None,
    ) -> None:
        if policy not in ("fail_closed", "fail_open", "introspect"):
            raise ValueError(f"unknown staleness policy {policy!r}")
        if policy == "introspect" and introspect is None:
            raise ValueError("policy 'introspect' needs an introspect callable")
        self._verifier = verifier
        self._state = state
        self._freshness = freshness
        self._policy = policy
        self._introspect = introspect
        self._retry_after = retry_after
        self._max_header_bytes = max_header_bytes
        # Optional: with it, a request within the freshness deadline needs one clock read, not a judgement.
        self._fresh_until = fresh_until
        self._clock = clock
        # Optional: the wall-clock time from which the state holds every revocation (a replayed state holds
        # nothing older); a token issued before it is refused as stale, never judged on what is missing.
        self._complete_since = complete_since
        self._warned_stale = False
        # Only on a refusal, never on the accepting path: None costs a refused request one test.
        self._on_revoked = on_revoked
        # The warm path's map: header value -> (Principal, wall-clock time its token expires), at most as
        # many entries as the verifier caches.
        self._warm: dict[str, tuple[Principal, float]] = {}
        self._warm_size = verifier.cache_size
        self._wall = verifier.now
        # Read by the metrics layer: rejections by reason, and what happened while the state was stale.
        self.rejections: Counter[str] = Counter()
        self.stale_accepted = 0
        self.introspections = 0

    def check_cached(
        self, authorization: str | None, required_scopes: tuple[str, ...] = ()
    ) -> Principal | None:
        """The warm path: the Principal of a header seen before, while fresh; None means await check().

        The warm map holds exact "Bearer <token>" header values whose token passed the full check, with the
        wall-clock time the token expires; so a hit is one dictionary lookup, two clock reads and the
        revocation check, which is made on every call, never cached. A stale or unsynced state, an expired
        token and any other spelling of the header are left to check(), which owns the policies.
        """
        if authorization is None:
            return None
        hit = self._warm.get(authorization)
        if hit is None:
            return None
        principal, dead_at = hit
        if self._wall() >= dead_at:
            del self._warm[authorization]
            return None
        deadline = self._fresh_until
        if (deadline is None or self._clock() >= deadline.fresh_until) and self._freshness() != "fresh":
            return None
        reason = self._state.is_revoked(principal.facts)
        if reason is not None:
            self.rejections[reason.value] += 1
            if self._on_revoked is not None:
                self._on_revoked(principal, reason)
            raise TokenRevoked(reason.value)
        if required_scopes:
            scopes = principal.scopes
            for scope in required_scopes:
                if scope not in scopes:
                    self.rejections["insufficient_scope"] += 1
                    raise InsufficientScope(" ".join(required_scopes))
        if self._warned_stale:
            self._warned_stale = False
        return principal

    def _remember(self, authorization: str, token: str, principal: Principal) -> None:
        """Keep an exact "Bearer <token>" header for the warm path; the oldest entry goes when full.

        First in, first out rather than least recently used: a hit then writes nothing, and a busy token
        that is pushed out costs one verification (the verifier's own cache) before it is back.
        """
        if self._warm_size <= 0 or authorization != f"Bearer {token}":
            return
        warm = self._warm
        warm[authorization] = (principal, self._verifier.dead_at(principal))
        if len(warm) > self._warm_size:
            del warm[next(iter(warm))]

    def dead_at(self, principal: Principal) -> float:
        """The wall-clock time from which the principal's token is refused as expired."""
        return self._verifier.dead_at(principal)

    @property
    def retry_after(self) -> int:
        """Seconds a refused client should wait (Retry-After of a stale refusal)."""
        return self._retry_after

    def may_answer(self) -> bool:
        """Whether a request this Guard accepted may still be answered 2xx now (the answer gate asks)."""
        if self._policy != "fail_closed":
            return True
        deadline = self._fresh_until
        if deadline is not None and self._clock() < deadline.fresh_until:
            return True
        return self._freshness() == "fresh"

    def refused_at_answer(self) -> None:
        """Count an accepted request refused when its answer was written, the state stale by then."""
        self.rejections["state_stale_at_answer"] += 1

    async def check(self, authorization: str | None, required_scopes: Iterable[str] = ()) -> Principal:
        """The Principal of the request's bearer token, or a ResourceError saying why not."""
        needed = required_scopes if isinstance(required_scopes, tuple) else tuple(required_scopes)
        principal = self.check_cached(authorization, needed)
        if principal is not None:
            return principal
        try:
            return await self._check(authorization, needed)
        except ResourceError as err:
            self.rejections[_rejection_reason(err)] += 1
            raise

    async def _check(self, authorization: str | None, needed: tuple[str, ...]) -> Principal:
        token = bearer_token(authorization, self._max_header_bytes)
        assert authorization is not None  # bearer_token refuses a missing header
        principal = await self._verifier.verify(token)
        # Never cached: a revocation must take effect on the very next request.
        reason = self._state.is_revoked(principal.facts)
        if reason is not None:
            if self._on_revoked is not None:
                self._on_revoked(principal, reason)
            raise TokenRevoked(reason.value)
        if self._complete_since is not None and principal.facts.iat < self._complete_since():
            raise StateStale(
                self._retry_after, "the token was issued before the revocations this instance holds"
            )
        freshness = self._freshness()
        if freshness == "fresh":
            self._warned_stale = False
        elif freshness == "unsynced":
            # fail_open and introspect are about a state that was right a moment ago; a state that never
            # caught up knows nothing, so no policy accepts on it.
            raise StateStale(self._retry_after, "revocation state has not caught up with the log yet")
        else:
            await self._when_stale(token)
        scopes = principal.scopes
        if any(scope not in scopes for scope in needed):
            raise InsufficientScope(" ".join(needed))
        self._remember(authorization, token, principal)
        return principal

    async def _when_stale(self, token: str) -> None:
        if self._policy == "fail_closed":
            raise StateStale(self._retry_after)
        if self._policy == "fail_open":
            self.stale_accepted += 1
            if not self._warned_stale:
                # Once per stale spell: a line per request would bury everything else in the log.
                logger.warning("revocation state is stale; accepting tokens anyway (policy fail_open)")
                self._warned_stale = True
            return
        introspect = self._introspect
        if introspect is None:  # refused in __init__; kept so a bug here fails closed
            raise StateStale(self._retry_after)
        self.introspections += 1
        try:
            active = await introspect(token)
        except Exception as exc:  # an unreachable auth service cannot vouch for the token: fail closed
            logger.warning("introspection failed while stale: %s: %s", type(exc).__name__, exc)
            raise StateStale(
                self._retry_after, "revocation state is not fresh and introspection failed"
            ) from None
        if not active:
            raise TokenRevoked("introspection_inactive")
