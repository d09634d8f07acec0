"""End to end on loopback: `tokenlife auth serve` and `tokenlife resource serve` as real processes.

The auth service runs its relay, so revocations cross RabbitMQ; when the broker is gone the resource service's
HTTP poll carries them. Either way the promise checked is the same: a logged-out token is refused within the
deadline, and nothing committed is lost across a kill -9 or a broker restart.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest

from auth_service.db.engine import create_engine
from auth_service.settings import DEV_KEY_ENCRYPTION_KEY
from auth_service.tokens.keyring import KeyRing
from auth_service.tokens.keys import load
from tests.conftest import PASSWORD, SERVICE_CLIENT, add_user, free_port, start_auth_server

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

DEADLINE = 10.0


def _resource_command(port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tokenlife",
        "resource",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


class ResourceProcess:
    """`tokenlife resource serve` on a fixed loopback port, restartable."""

    def __init__(self, auth_url: str, amqp_url: str, exchange: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENLIFE_")} | {
            "TOKENLIFE_ENV": "dev",
            "TOKENLIFE_AUTH_URL": auth_url,
            "TOKENLIFE_AMQP_URL": amqp_url,
            "TOKENLIFE_EXCHANGE": exchange,
            "TOKENLIFE_SERVICE_CLIENT_ID": SERVICE_CLIENT[0],
            "TOKENLIFE_SERVICE_CLIENT_SECRET": SERVICE_CLIENT[1],
            "TOKENLIFE_POLL_INTERVAL": "0.2",
            "TOKENLIFE_HEARTBEAT_INTERVAL": "0.2",
            "TOKENLIFE_MAX_STALENESS": "3",
            "TOKENLIFE_HTTP_TIMEOUT": "2",
            "TOKENLIFE_JWKS_MIN_INTERVAL": "0",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the process and wait until it answers /healthz (not necessarily ready)."""
        self.proc = subprocess.Popen(
            _resource_command(self.port), env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(lambda: _answers(f"{self.base}/healthz"), "the resource service answers")

    def kill(self) -> None:
        """kill -9, and reap it."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def wait_for(check: Any, what: str, deadline: float = DEADLINE) -> None:
    """Poll `check()` until true; fail naming `what` after the deadline."""
    end = time.monotonic() + deadline
    while not check():
        if time.monotonic() > end:
            pytest.fail(f"not within {deadline} s: {what}")
        time.sleep(0.05)


def login(auth_url: str, email: str) -> str:
    """An access token from the real token endpoint."""
    form = {"grant_type": "password", "username": email, "password": PASSWORD}
    response = httpx.post(f"{auth_url}/oauth/token", data=form)
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def whoami(base: str, token: str) -> httpx.Response:
    """GET /v1/whoami with the token."""
    return httpx.get(f"{base}/v1/whoami", headers={"Authorization": f"Bearer {token}"})


def assert_invalid_token(response: httpx.Response) -> None:
    """401 with an RFC 6750 challenge naming invalid_token."""
    assert response.status_code == 401, response.text
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="tokenlife"')
    assert 'error="invalid_token"' in challenge
    assert "error_description=" in challenge


@pytest.fixture
def stack(
    database_url: str, amqp_url: str, exchange_name: str
) -> Iterator[tuple[subprocess.Popen[bytes], str, ResourceProcess]]:
    """The auth service (relay on) and a resource service, both real processes; killed after the test."""
    auth_proc, auth_url = start_auth_server(database_url, amqp_url, TOKENLIFE_EXCHANGE=exchange_name)
    resource = ResourceProcess(auth_url, amqp_url, exchange_name)
    try:
        resource.start()
        yield auth_proc, auth_url, resource
    finally:
        resource.kill()
        auth_proc.send_signal(signal.SIGCONT)
        auth_proc.kill()
        auth_proc.wait(timeout=10)
        if auth_proc.stderr:
            auth_proc.stderr.close()


def test_logout_is_refused_everywhere_and_survives_a_resource_kill(
    database_url: str, stack: tuple[subprocess.Popen[bytes], str, ResourceProcess]
) -> None:
    auth_proc, auth_url, resource = stack
    user_id = asyncio.run(add_user(database_url, "hal@example.com"))
    wait_for(lambda: _answers(f"{resource.base}/readyz"), "the resource service is ready")
    token = login(auth_url, "hal@example.com")
    response = whoami(resource.base, token)
    assert response.status_code == 200
    assert response.json()["sub"] == user_id

    logout = httpx.post(f"{auth_url}/v1/auth/logout", headers={"Authorization": f"Bearer {token}"})
    assert logout.status_code == 200
    wait_for(lambda: whoami(resource.base, token).status_code == 401, "the logged-out token is refused")
    assert_invalid_token(whoami(resource.base, token))

    resource.kill()
    # With the auth service paused the restarted instance cannot rebuild its state, so it must say not ready.
    auth_proc.send_signal(signal.SIGSTOP)
    try:
        resource.start()
        response = httpx.get(f"{resource.base}/readyz", timeout=5)
        assert response.status_code == 503
        assert response.json()["caught_up"] is False
    finally:
        auth_proc.send_signal(signal.SIGCONT)
    wait_for(lambda: _answers(f"{resource.base}/readyz"), "the restarted instance is ready")
    assert_invalid_token(whoami(resource.base, token))
    assert whoami(resource.base, login(auth_url, "hal@example.com")).status_code == 200


def _signing_key(database_url: str) -> tuple[str, Any, str]:
    async def ring() -> KeyRing:
        engine = create_engine(database_url, pool_size=1)
        try:
            async with engine.connect() as conn:
                return await load(conn, DEV_KEY_ENCRYPTION_KEY, 300)
        finally:
            await engine.dispose()

    active = asyncio.run(ring()).active
    assert active is not None
    return active.kid, active.private_key, active.alg


def _claims(auth_url: str, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "iss": auth_url,
        "aud": "tokenlife",
        "sub": str(uuid.uuid4()),
        "sid": str(uuid.uuid4()),
        "jti": uuid.uuid4().hex,
        "iat": now,
        "exp": now + 300,
        "client_id": "tokenlife",
    }
    return base | overrides


def _b64(obj: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def test_forged_expired_and_foreign_tokens_get_rfc6750_challenges(
    database_url: str, stack: tuple[subprocess.Popen[bytes], str, ResourceProcess]
) -> None:
    _auth_proc, auth_url, resource = stack
    wait_for(lambda: _answers(f"{resource.base}/readyz"), "the resource service is ready")
    kid, key, alg = _signing_key(database_url)
    headers = {"kid": kid, "typ": "at+jwt"}
    now = int(time.time())
    unsigned = f"{_b64({'alg': 'none', 'typ': 'at+jwt', 'kid': kid})}.{_b64(_claims(auth_url))}.AAAA"
    expired = jwt.encode(_claims(auth_url, iat=now - 900, exp=now - 600), key, alg, headers)
    foreign = jwt.encode(_claims(auth_url, aud="another-api"), key, alg, headers)
    good = jwt.encode(_claims(auth_url), key, alg, headers)
    assert whoami(resource.base, good).status_code == 200  # the forging itself is sound
    for token, why in ((unsigned, "algorithm"), (expired, "expired"), (foreign, "audience")):
        response = whoami(resource.base, token)
        assert_invalid_token(response)
        assert why in response.headers["www-authenticate"]
    missing = httpx.get(f"{resource.base}/v1/whoami")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == 'Bearer realm="tokenlife"'


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


def _readyz(base: str) -> dict[str, Any]:
    try:
        body: dict[str, Any] = httpx.get(f"{base}/readyz", timeout=2).json()
    except httpx.TransportError:
        return {}
    return body


def test_broker_restart_loses_no_revocation(
    database_url: str, amqp_url: str, stack: tuple[subprocess.Popen[bytes], str, ResourceProcess]
) -> None:
    if shutil.which("rabbitmqctl") is None or "127.0.0.1" not in amqp_url and "localhost" not in amqp_url:
        pytest.skip("restarting the broker needs the local RabbitMQ and its rabbitmqctl")
    _auth_proc, auth_url, resource = stack
    asyncio.run(add_user(database_url, "ida@example.com"))
    wait_for(lambda: _readyz(resource.base).get("broker_live") is True, "the resource service is live")
    during, after = login(auth_url, "ida@example.com"), login(auth_url, "ida@example.com")

    _rabbitmqctl("stop_app")
    try:
        logout = httpx.post(f"{auth_url}/v1/auth/logout", headers={"Authorization": f"Bearer {during}"})
        assert logout.status_code == 200  # committed in the log, whatever the broker does
        wait_for(lambda: whoami(resource.base, during).status_code == 401, "refused over the HTTP path")
        assert whoami(resource.base, after).status_code == 200  # still fresh: the HTTP poll confirms it
    finally:
        _rabbitmqctl("start_app")
        _rabbitmqctl("await_startup")

    wait_for(lambda: _readyz(resource.base).get("broker_live") is True, "the feed is back on the broker", 30)
    logout = httpx.post(f"{auth_url}/v1/auth/logout", headers={"Authorization": f"Bearer {after}"})
    assert logout.status_code == 200
    head = logout.json()["position"]
    wait_for(lambda: whoami(resource.base, after).status_code == 401, "refused after the restart")
    assert_invalid_token(whoami(resource.base, during))

    def relay_metric(name: str) -> float:
        found = re.search(
            rf"^tokenlife_relay_{name} ([0-9.e+]+)$", httpx.get(f"{auth_url}/metrics").text, re.M
        )
        assert found is not None, name
        return float(found.group(1))

    # The relay reconnected on its own and published everything, the event committed during the outage too.
    wait_for(
        lambda: relay_metric("broker_reconnects_total") >= 1 and relay_metric("cursor_position") >= head,
        "the relay reconnected and its cursor reached the head",
        30,
    )
