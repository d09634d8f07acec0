"""The auth service's pure rules: rotation decisions, scopes, login backoff, watermark rounding."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from auth_service.accounts.backoff import BackoffRule, wait_seconds
from auth_service.errors import InvalidScope
from auth_service.log.intents import Rotation, decide_rotation, revocation_reason
from auth_service.log.lifetimes import whole_second_floor
from auth_service.tokens.access import hash_refresh_token, new_refresh_token, unverified_kid
from auth_service.tokens.grant_rules import grant_scope

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


ALL = ("read", "write", "admin")


@pytest.mark.parametrize(
    ("requested", "held", "allowed", "granted"),
    [
        (None, "read write", ALL, "read write"),
        ("", "read", ALL, "read"),
        ("write admin", "read write", ALL, "write"),
        (None, "read write admin", ("read", "write"), "read write"),
        ("read admin", "read admin", ("read",), "read"),
        (None, "", ALL, ""),
    ],
)
def test_granted_scope_is_the_request_narrowed_to_the_user_and_the_client(
    requested: str | None, held: str, allowed: tuple[str, ...], granted: str
) -> None:
    assert grant_scope(requested, held, allowed) == granted


@pytest.mark.parametrize(
    ("requested", "held", "allowed"),
    [("x", "", ALL), ("admin", "read write", ALL), ("admin", "admin", ("read",))],
)
def test_nothing_grantable_of_what_was_requested_is_invalid_scope(
    requested: str, held: str, allowed: tuple[str, ...]
) -> None:
    with pytest.raises(InvalidScope):
        grant_scope(requested, held, allowed)


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


RULE = BackoffRule(max_failures=3, window=100, max_backoff=60)
T = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T + timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("failures", "last", "now", "wait"),
    [
        (2, 0, 0, 0),  # under the limit
        (3, 0, 0, 1),  # at the limit: 2**0
        (4, 0, 0, 2),
        (4, 0, 1.5, 1),  # part of the backoff has passed
        (4, 0, 2, 0),
        (20, 0, 0, 60),  # capped at max_backoff
    ],
)
def test_backoff_doubles_past_the_limit_and_is_capped(
    failures: int, last: float, now: float, wait: int
) -> None:
    assert wait_seconds(RULE, failures, at(0), at(last), at(now)) == wait


def test_failures_outside_the_window_are_forgotten() -> None:
    assert wait_seconds(RULE, 50, at(0), at(99), at(100)) > 0
    assert wait_seconds(RULE, 50, at(0), at(99), at(101)) == 0


def test_refresh_tokens_are_random_and_stored_only_as_sha256() -> None:
    tokens = {new_refresh_token() for _ in range(100)}
    assert len(tokens) == 100
    token = tokens.pop()
    assert len(token) >= 43
    assert len(hash_refresh_token(token)) == 32
    assert hash_refresh_token(token) != token.encode()
