"""Lifetimes: the auth side keeps revocations longer than any resource service can need them."""

from __future__ import annotations

import ast
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import annotated_types
from cryptography.hazmat.primitives.asymmetric import rsa

from auth_service.log import lifetimes
from auth_service.tokens.access import sign_access_token
from auth_service.tokens.keyring import SigningKey
from resource_service.settings import ResourceSettings

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 27, 12, 0, 0, 900000, tzinfo=UTC)
TTL = 300


def _largest_resource_leeway() -> int:
    bounds = [
        m.le for m in ResourceSettings.model_fields["leeway"].metadata if isinstance(m, annotated_types.Le)
    ]
    assert len(bounds) == 1, "ResourceSettings.leeway must have an upper bound"
    bound = bounds[0]
    assert isinstance(bound, int)
    return bound


def _resource_state_margin() -> float:
    """X in `RevocationState(leeway=settings.leeway + X)`, as resource_service/runtime.py builds it."""
    tree = ast.parse((ROOT / "resource_service" / "runtime.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "RevocationState":
            for keyword in node.keywords:
                value = keyword.value
                if (
                    keyword.arg == "leeway"
                    and isinstance(value, ast.BinOp)
                    and isinstance(value.op, ast.Add)
                    and ast.unparse(value.left) == "settings.leeway"
                    and isinstance(value.right, ast.Constant)
                    and isinstance(value.right.value, int | float)
                ):
                    return float(value.right.value)
    raise AssertionError(
        "resource_service/runtime.py no longer builds RevocationState(leeway=settings.leeway + X)"
    )


def test_the_largest_verifier_leeway_is_the_one_resource_services_accept() -> None:
    assert timedelta(seconds=_largest_resource_leeway()) == lifetimes.MAX_VERIFIER_LEEWAY


def test_the_auth_side_keeps_a_revocation_longer_than_any_resource_service() -> None:
    leeway = _largest_resource_leeway()
    resource_retention = timedelta(seconds=leeway + _resource_state_margin())
    assert timedelta(seconds=leeway) < resource_retention <= lifetimes.REVOCATION_RETENTION


def test_the_latest_expiry_covers_a_token_whose_iat_a_watermark_lifted() -> None:
    key = SigningKey("k", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    mark = lifetimes.watermark(NOW, None)  # set in this very second: the next token's iat is lifted to it
    token = sign_access_token(
        key,
        issuer="i",
        audience="a",
        subject="u",
        session_id=uuid.uuid4(),
        client_id="c",
        scope="",
        ttl=TTL,
        now=NOW,
        not_before=mark,
    )
    assert token.issued_at == mark > NOW
    assert token.expires_at <= lifetimes.latest_access_expiry(NOW, TTL)


def test_a_watermark_passes_every_token_issued_so_far_and_never_moves_back() -> None:
    assert lifetimes.watermark(NOW, None) == datetime(2026, 11, 27, 12, 0, 1, tzinfo=UTC)
    later = NOW + timedelta(seconds=10)
    assert lifetimes.watermark(NOW, later) == later + timedelta(seconds=1)


def test_a_session_may_hold_a_live_access_token_until_its_last_one_expires() -> None:
    ended = NOW - timedelta(seconds=TTL)
    assert lifetimes.may_hold_live_access_token(ended, NOW, TTL)
    assert not lifetimes.may_hold_live_access_token(ended - timedelta(seconds=2), NOW, TTL)


def test_a_retired_key_stays_published_while_any_verifier_accepts_its_tokens() -> None:
    horizon = lifetimes.key_publication_horizon(NOW, TTL)
    assert horizon == NOW - timedelta(seconds=TTL) - lifetimes.MAX_VERIFIER_LEEWAY
    assert lifetimes.beyond_every_leeway(NOW - lifetimes.MAX_VERIFIER_LEEWAY - timedelta(seconds=1), NOW)
    assert not lifetimes.beyond_every_leeway(NOW - lifetimes.MAX_VERIFIER_LEEWAY, NOW)
