"""A Shared Signals receiver for the tests: its registration, its token, and the checks it makes of every
SET, with a second JOSE library (joserfc) against the transmitter's published JWKS."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import jwt as pyjwt
import uvicorn
from joserfc import jwt
from joserfc.jwk import KeySet

from auth_service.accounts.clients import secret_hash

SESSION_REVOKED = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
CREDENTIAL_CHANGE = "https://schemas.openid.net/secevent/caep/event-type/credential-change"
VERIFICATION = "https://schemas.openid.net/secevent/ssf/event-type/verification"
STREAM_UPDATED = "https://schemas.openid.net/secevent/ssf/event-type/stream-updated"
PUSH, POLL = "urn:ietf:rfc:8935", "urn:ietf:rfc:8936"

RECEIVER_A = ("receiver-a", "receiver-a-secret-0123456789abcdef")
RECEIVER_B = ("receiver-b", "receiver-b-secret-0123456789abcdef")
READ_ONLY = ("receiver-read", "receiver-read-secret-0123456789abcd")


def clients_json() -> str:
    """TOKENLIFE_CLIENTS with the dev console and three receivers (two managers, one reader)."""
    clients: dict[str, Any] = {
        "tokenlife-console": {"type": "public", "grant_types": ["password", "refresh_token"]},
    }
    for (name, secret), scopes in (
        (RECEIVER_A, ["ssf.read", "ssf.manage"]),
        (RECEIVER_B, ["ssf.read", "ssf.manage"]),
        (READ_ONLY, ["ssf.read"]),
    ):
        clients[name] = {
            "type": "confidential",
            "secret_hash": secret_hash(secret),
            "grant_types": ["client_credentials"],
            "scopes": scopes,
        }
    return json.dumps(clients)


async def receiver_token(
    client: httpx.AsyncClient, receiver: tuple[str, str], scope: str | None = None
) -> str:
    """A client_credentials access token for the receiver."""
    data = {"grant_type": "client_credentials"} | ({"scope": scope} if scope else {})
    response = await client.post("/oauth/token", data=data, auth=receiver)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def verify_set(value: str, jwks: dict[str, Any], issuer: str, audience: str) -> dict[str, Any]:
    """The SET's claims, after the checks a careful receiver makes: signature (joserfc, the JWKS), header
    (its key's own algorithm, secevent+jwt, a kid), and the claims SSF 1.0 and the CAEP Interoperability
    Profile require."""
    allowed = ["ES256", "EdDSA", "RS256"]
    token = jwt.decode(value, KeySet.import_key_set(jwks), algorithms=allowed)  # type: ignore[arg-type]
    assert token.header["typ"] == "secevent+jwt"
    key = next(k for k in jwks["keys"] if k["kid"] == token.header["kid"])
    assert token.header["alg"] == key["alg"]
    claims: dict[str, Any] = token.claims
    assert claims["iss"] == issuer
    assert claims["aud"] == audience
    assert isinstance(claims["jti"], str)
    assert claims["jti"]
    assert isinstance(claims["iat"], int)
    assert isinstance(claims["txn"], str)
    assert claims["txn"]
    assert "exp" not in claims
    assert "sub" not in claims
    [(event_type, event)] = claims["events"].items()  # exactly one event (Interoperability Profile)
    subject = claims["sub_id"]
    if event_type in (VERIFICATION, STREAM_UPDATED):
        assert subject["format"] == "opaque"  # the stream (SSF 1.0 §8.1.4, §8.1.5)
        assert isinstance(subject["id"], str)
        if event_type == STREAM_UPDATED:
            assert event["status"] in ("enabled", "paused", "disabled")  # REQUIRED
            assert set(event) <= {"status", "reason"}
        return claims
    assert isinstance(event["event_timestamp"], int)
    assert event["initiating_entity"] in ("admin", "user", "policy", "system")
    assert event["reason_admin"]["en"]  # non-empty (Interoperability Profile)
    if event_type == SESSION_REVOKED:
        assert subject["format"] == "complex"
        assert subject["user"]["format"] == "iss_sub"
        assert subject["user"]["iss"] == issuer
        assert subject["session"]["format"] == "opaque"
    elif event_type == CREDENTIAL_CHANGE:
        assert subject["format"] == "iss_sub"
        assert subject["iss"] == issuer
        assert event["credential_type"] == "password"
        assert event["change_type"] == "update"
    else:
        raise AssertionError(f"unexpected event type {event_type}")
    return claims


def summary(claims: dict[str, Any]) -> tuple[str, str, str | None]:
    """(event type's last segment, user, session) of a verified SET, to compare with what a test expects."""
    [(event_type, _event)] = claims["events"].items()
    subject = claims["sub_id"]
    kind = event_type.rsplit("/", 1)[1]
    if kind == "session-revoked":
        return kind, subject["user"]["sub"], subject["session"]["id"]
    if kind == "credential-change":
        return kind, subject["sub"], None
    return kind, subject["id"], None


class PushReceiver:
    """A push receiver (RFC 8935) on a loopback port, under uvicorn: it records every SET POSTed to /events
    and answers `status` (202 by default) after `delay` seconds; `stop()` takes it off the network
    (connections refused) and `start()` brings it back on the same port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}/events"
        self.received: list[str] = []  # every SET taken (2xx), in arrival order
        self.arrivals: list[float] = []  # time.monotonic() of each, for the benchmark
        self.attempts = 0
        self.status = 202
        self.delay = 0.0
        self.authorization: list[str | None] = []
        self._server: Any = None
        self._task: Any = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.attempts += 1
        status, delay = self.status, self.delay
        if delay:
            await asyncio.sleep(delay)
        headers = dict(scope["headers"])
        if 200 <= status < 300 and headers.get(b"content-type") == b"application/secevent+jwt":
            self.received.append(body.decode())
            self.arrivals.append(time.monotonic())
            auth = headers.get(b"authorization")
            self.authorization.append(auth.decode() if auth else None)
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    def distinct(self) -> int:
        """How many different SETs (by jti) it took: a SET sent again after a timeout is the same SET."""
        return len({pyjwt.decode(v, options={"verify_signature": False})["jti"] for v in self.received})

    async def start(self) -> None:
        config = uvicorn.Config(self, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            assert not self._task.done(), "the receiver did not start"
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            await asyncio.wait_for(self._task, 10)
            self._server = None


async def wait_until(predicate: Any, within: float, what: str) -> None:
    """Poll `predicate` every 20 ms until it holds; fail after `within` seconds naming `what`."""
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)
