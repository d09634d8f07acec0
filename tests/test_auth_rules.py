"""The auth service's pure rules: rotation decisions, scopes, login backoff, watermark rounding."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from auth_service.grants import Rotation, decide_rotation, grant_scope
from auth_service.revoke import revocation_reason
from auth_service.throttle import LoginThrottle
from auth_service.tokens import hash_refresh_token, new_refresh_token, unverified_kid, whole_second_floor

NOW = datetime(2026, 11, 27, 12, 0, 0, 500000, tzinfo=UTC)
GRACE = timedelta(seconds=5)


@pytest.mark.parametrize(
    ("rotated_at", "decision"),
    [
        (None, Rotation.ROTATE),
        (NOW - timedelta(seconds=1), Rotation.CONCURRENT),
        (NOW - GRACE, Rotation.CONCURRENT),
        (NOW - GRACE - timedelta(microseconds=1), Rotation.REUSE),
    ],
)
def test_rotation_decision_depends_only_on_when_the_token_was_rotated(
    rotated_at: datetime | None, decision: Rotation
) -> None:
    assert decide_rotation(rotated_at, NOW, GRACE) is decision


@pytest.mark.parametrize(
    ("requested", "held", "granted"),
    [
        (None, "read write", "read write"),
        ("", "read", "read"),
        ("write admin", "read write", "write"),
        ("x", "", ""),
    ],
)
def test_granted_scope_never_exceeds_what_the_user_holds(
    requested: str | None, held: str, granted: str
) -> None:
    assert grant_scope(requested, held) == granted


def test_a_watermark_one_second_past_the_floor_covers_every_earlier_token() -> None:
    mark = whole_second_floor(NOW) + timedelta(seconds=1)  # what revoke_user sets with no earlier watermark
    assert mark == datetime(2026, 11, 27, 12, 0, 1, tzinfo=UTC)
    issued_before = int(NOW.timestamp())  # iat of a token signed just before, truncated to the second
    assert revocation_reason([("user", "u", mark)], issued_before) == "user_revoked"
    on_the_second = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    assert whole_second_floor(on_the_second) == on_the_second
    assert revocation_reason([("user", "u", mark)], int(on_the_second.timestamp())) == "user_revoked"
    assert revocation_reason([("user", "u", mark)], int(mark.timestamp())) is None


def test_unverified_kid_reads_the_header_and_refuses_junk() -> None:
    import jwt

    token = jwt.encode({"sub": "x"}, "k" * 32, algorithm="HS256", headers={"kid": "abc"})
    assert unverified_kid(token) == "abc"
    assert unverified_kid("not-a-jwt") is None
    assert unverified_kid(jwt.encode({"sub": "x"}, "k" * 32, algorithm="HS256")) is None


def test_revocation_reason_for_jti_session_and_key_is_presence() -> None:
    for kind in ("jti", "session", "key"):
        assert revocation_reason([(kind, "x", None)], 0) == f"{kind}_revoked"
    assert revocation_reason([], 0) is None


def test_login_backoff_grows_per_key_and_resets_on_success() -> None:
    now = [0.0]
    throttle = LoginThrottle(max_failures=3, window=100, max_backoff=60, clock=lambda: now[0])
    for _ in range(3):
        assert throttle.retry_after("account:a") == 0
        throttle.failed("account:a")
    assert throttle.retry_after("account:a") == 1
    throttle.failed("account:a")
    assert throttle.retry_after("account:a") == 2
    assert throttle.retry_after("account:b") == 0
    now[0] = 2.0
    assert throttle.retry_after("account:a") == 0
    throttle.succeeded("account:a")
    throttle.failed("account:a")
    assert throttle.retry_after("account:a") == 0


def test_login_failures_outside_the_window_are_forgotten() -> None:
    now = [0.0]
    throttle = LoginThrottle(max_failures=1, window=10, clock=lambda: now[0])
    throttle.failed("address:x")
    throttle.failed("address:x")
    assert throttle.retry_after("address:x") > 0
    now[0] = 11.0
    assert throttle.retry_after("address:x") == 0


def test_refresh_tokens_are_random_and_stored_only_as_sha256() -> None:
    tokens = {new_refresh_token() for _ in range(100)}
    assert len(tokens) == 100
    token = tokens.pop()
    assert len(token) >= 43
    assert len(hash_refresh_token(token)) == 32
    assert hash_refresh_token(token) != token.encode()
