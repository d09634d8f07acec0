"""Every auth service endpoint against every class of bad input: a clear 4xx in the RFC's shape, never a 500.

Form endpoints answer RFC 6749 §5.2 bodies ({"error", "error_description"}); bearer-protected endpoints answer
401 with an RFC 6750 §3 `WWW-Authenticate: Bearer` challenge; service endpoints answer 401 invalid_client
with a Basic challenge. Each request is otherwise valid, so the one bad part is what the answer is about.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlencode

import httpx
import pytest

from tests.conftest import PASSWORD, SERVICE_CLIENT, add_user

pytestmark = pytest.mark.integration

EMAIL = "bad-input@example.com"
LIMIT = 64 * 1024
FORM = "application/x-www-form-urlencoded"
Auth = Literal["none", "bearer", "basic"]


@dataclass(frozen=True)
class Endpoint:
    """One route, how it authenticates, and a form body it accepts (None: it reads no body)."""

    method: str
    path: str
    auth: Auth
    form: dict[str, str] | None = None
    required: tuple[str, ...] = field(default=())

    @property
    def name(self) -> str:
        return f"{self.method} {self.path}"


SID = "{sid}"
TOKEN = Endpoint(
    "POST",
    "/oauth/token",
    "none",
    {"grant_type": "password", "username": EMAIL, "password": PASSWORD},
    ("grant_type", "username", "password"),
)
REVOKE = Endpoint("POST", "/oauth/revoke", "none", {"token": "whatever"}, ("token",))
INTROSPECT = Endpoint("POST", "/oauth/introspect", "basic", {"token": "whatever"}, ("token",))
LOGOUT = Endpoint("POST", "/v1/auth/logout", "bearer", {"scope": "others"})
SESSIONS = Endpoint("GET", "/v1/sessions", "bearer")
DELETE_SESSION = Endpoint("DELETE", f"/v1/sessions/{SID}", "bearer")
SESSION_EVENTS = Endpoint("GET", f"/v1/sessions/{SID}/events", "bearer")
PASSWORD_CHANGE = Endpoint(
    "POST",
    "/v1/auth/password",
    "bearer",
    {"current_password": PASSWORD, "new_password": "a brand new passphrase, long enough"},
    ("current_password", "new_password"),
)
EVENTS = Endpoint("GET", "/v1/events", "basic")
REVOCATIONS = Endpoint("GET", "/v1/revocations", "basic")

ENDPOINTS = [
    TOKEN,
    REVOKE,
    INTROSPECT,
    LOGOUT,
    SESSIONS,
    DELETE_SESSION,
    SESSION_EVENTS,
    PASSWORD_CHANGE,
    EVENTS,
    REVOCATIONS,
]
FORM_ENDPOINTS = [e for e in ENDPOINTS if e.form is not None]
BEARER_ENDPOINTS = [e for e in ENDPOINTS if e.auth == "bearer"]
BASIC_ENDPOINTS = [e for e in ENDPOINTS if e.auth == "basic"]


def _ids(endpoints: list[Endpoint]) -> list[object]:
    return [pytest.param(e, id=e.name) for e in endpoints]


def _basic(user: str | bytes, secret: str | bytes = b"") -> bytes:
    raw = user if isinstance(user, bytes) else user.encode()
    if secret:
        raw += b":" + (secret if isinstance(secret, bytes) else secret.encode())
    return b"Basic " + base64.b64encode(raw)


SERVICE_BASIC = _basic(*SERVICE_CLIENT)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned_jwt() -> str:
    header = {"alg": "none", "typ": "at+jwt", "kid": "nope"}
    claims = {"iss": "x", "aud": "tokenlife", "sub": "u", "exp": 2**40, "iat": 0, "jti": "j", "sid": "s"}
    return f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}."


async def _chunks(body: bytes, size: int = 8192) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


# --- fixtures and helpers ---------------------------------------------------------------------------------


async def login(client: httpx.AsyncClient, database_url: str) -> str:
    """The access token of a freshly created and logged-in user."""
    await add_user(database_url, EMAIL)
    response = await client.post("/oauth/token", data=TOKEN.form)
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


@pytest.fixture
async def access_token(auth_client: httpx.AsyncClient, database_url: str) -> str:
    """An access token of a freshly logged-in user."""
    return await login(auth_client, database_url)


async def credentials(client: httpx.AsyncClient, database_url: str, endpoint: Endpoint) -> dict[str, bytes]:
    """Valid credentials for the endpoint (logging a user in if it takes a bearer token)."""
    if endpoint.auth == "basic":
        return {"authorization": SERVICE_BASIC}
    if endpoint.auth == "bearer":
        return {"authorization": b"Bearer " + (await login(client, database_url)).encode()}
    return {}


async def send(
    client: httpx.AsyncClient,
    endpoint: Endpoint,
    *,
    headers: dict[str, bytes] | None = None,
    path: str | None = None,
    content: bytes | AsyncIterator[bytes] | None = None,
    content_type: str | None = FORM,
    params: str = "",
) -> httpx.Response:
    """One request to the endpoint, with exactly the given headers and body."""
    sent = dict(headers or {})
    if content is not None and content_type is not None:
        sent["content-type"] = content_type.encode()
    url = (path or endpoint.path).replace(SID, str(uuid.uuid4()))
    if params:
        url += "?" + params
    # Built by hand so httpx adds nothing (no form encoding, no content type) of its own.
    raw = [(name.encode(), value) for name, value in sent.items()]
    request = client.build_request(endpoint.method, url, headers=raw, content=content)
    return await client.send(request)


def assert_oauth_error(response: httpx.Response, status: int, error: str | None = None) -> None:
    """An RFC 6749 §5.2 error: the status, and a JSON body with a string error and error_description."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    for name in ("error", "error_description"):
        assert isinstance(body.get(name), str), body
        assert body[name], body
    if error is not None:
        assert body["error"] == error, body


CHALLENGE_PARAM = re.compile(r'\s*([a-z_]+)="((?:[^"\\]|\\.)*)"\s*(?:,|$)')


def bearer_challenge(response: httpx.Response, status: int = 401) -> dict[str, str]:
    """The parameters of the response's RFC 6750 `WWW-Authenticate: Bearer` challenge, checked for syntax."""
    assert response.status_code == status, response.text
    challenge = response.headers.get("www-authenticate", "")
    scheme, _, rest = challenge.partition(" ")
    assert scheme == "Bearer", challenge
    params: dict[str, str] = {}
    position = 0
    while position < len(rest):
        match = CHALLENGE_PARAM.match(rest, position)
        assert match, f"malformed challenge {challenge!r}"
        assert match.group(1) not in params, f"repeated parameter in {challenge!r}"
        params[match.group(1)] = match.group(2)
        position = match.end()
    assert params.get("realm"), challenge
    return params


def form_body(fields: dict[str, str], *extra: tuple[str, str]) -> bytes:
    return urlencode([*fields.items(), *extra]).encode()


# --- bodies -----------------------------------------------------------------------------------------------


def _body_cases() -> list[object]:
    cases: list[object] = []
    for e in FORM_ENDPOINTS:
        assert e.form is not None
        valid = e.form
        first = next(iter(valid))
        cases += [
            pytest.param(e, b"&&=&", FORM, id=f"{e.name}-malformed-form"),
            pytest.param(e, form_body(valid) + b"&novalue", FORM, id=f"{e.name}-field-without-equals"),
            pytest.param(e, json.dumps(valid).encode(), "application/json", id=f"{e.name}-json-body"),
            pytest.param(e, form_body(valid), "text/plain", id=f"{e.name}-text-plain"),
            pytest.param(e, form_body(valid), "multipart/form-data; boundary=x", id=f"{e.name}-multipart"),
            pytest.param(e, form_body(valid, (first, valid[first])), FORM, id=f"{e.name}-repeated-{first}"),
            pytest.param(e, form_body(valid) + b"&x=\xff\xfe", FORM, id=f"{e.name}-raw-invalid-utf8"),
            pytest.param(e, form_body(valid) + b"&x=%ff%fe", FORM, id=f"{e.name}-encoded-invalid-utf8"),
            pytest.param(e, form_body(valid, ("x", "y" * 4097)), FORM, id=f"{e.name}-field-over-4-kib"),
        ]
        for name in e.required:
            missing = {k: v for k, v in valid.items() if k != name}
            cases.append(pytest.param(e, form_body(missing), FORM, id=f"{e.name}-missing-{name}"))
            emptied = valid | {name: ""}
            cases.append(pytest.param(e, form_body(emptied), FORM, id=f"{e.name}-empty-{name}"))
    return cases


@pytest.mark.parametrize(("endpoint", "content", "content_type"), _body_cases())
async def test_bad_form_body_is_invalid_request(
    auth_client: httpx.AsyncClient,
    database_url: str,
    endpoint: Endpoint,
    content: bytes,
    content_type: str,
) -> None:
    response = await send(
        auth_client,
        endpoint,
        headers=await credentials(auth_client, database_url, endpoint),
        content=content,
        content_type=content_type,
    )
    assert_oauth_error(response, 400, "invalid_request")


@pytest.mark.parametrize(
    ("endpoint", "fields", "error"),
    [
        pytest.param(TOKEN, {"grant_type": "implicit"}, "unsupported_grant_type", id="token-unknown-grant"),
        pytest.param(
            TOKEN,
            {"grant_type": "refresh_token", "refresh_token": "r" * 513},
            "invalid_request",
            id="token-refresh-token-too-long",
        ),
        pytest.param(
            TOKEN,
            {"grant_type": "refresh_token", "refresh_token": "unknown"},
            "invalid_grant",
            id="token-unknown-refresh-token",
        ),
        pytest.param(
            TOKEN,
            {**(TOKEN.form or {}), "password": "wrong"},
            "invalid_grant",
            id="token-wrong-password",
        ),
        pytest.param(
            TOKEN,
            {**(TOKEN.form or {}), "client_id": "c" * 129},
            "invalid_request",
            id="token-client-id-too-long",
        ),
        pytest.param(LOGOUT, {"scope": "everything"}, "invalid_request", id="logout-unknown-scope"),
        pytest.param(
            PASSWORD_CHANGE,
            {**(PASSWORD_CHANGE.form or {}), "current_password": "wrong"},
            "invalid_grant",
            id="password-wrong-current",
        ),
        pytest.param(
            PASSWORD_CHANGE,
            {**(PASSWORD_CHANGE.form or {}), "new_password": "short"},
            "invalid_request",
            id="password-new-too-weak",
        ),
    ],
)
async def test_bad_parameter_value_is_an_oauth_error(
    auth_client: httpx.AsyncClient,
    database_url: str,
    endpoint: Endpoint,
    fields: dict[str, str],
    error: str,
) -> None:
    response = await send(
        auth_client,
        endpoint,
        headers=await credentials(auth_client, database_url, endpoint),
        content=form_body(fields),
    )
    assert_oauth_error(response, 400, error)


@pytest.mark.parametrize(
    ("endpoint", "fields"),
    [
        pytest.param(
            TOKEN,
            {**(TOKEN.form or {}), "username": "bad-input\x00@example.com"},
            id="token-nul-in-username",
        ),
        pytest.param(
            TOKEN,
            {**(TOKEN.form or {}), "client_id": "app\x00"},
            id="token-nul-in-client-id",
        ),
        pytest.param(REVOKE, {"token": "x\x00y"}, id="revoke-nul-in-token"),
        pytest.param(INTROSPECT, {"token": "x\x00y"}, id="introspect-nul-in-token"),
        pytest.param(
            TOKEN,
            {"grant_type": "refresh_token", "refresh_token": "x\x00y"},
            id="token-nul-in-refresh-token",
        ),
    ],
)
async def test_nul_in_a_field_is_a_client_error(
    auth_client: httpx.AsyncClient, database_url: str, endpoint: Endpoint, fields: dict[str, str]
) -> None:
    await add_user(database_url, EMAIL)  # so a login with a NUL client_id gets as far as storing it
    response = await send(
        auth_client,
        endpoint,
        headers=await credentials(auth_client, database_url, endpoint),
        content=form_body(fields),
    )
    assert response.status_code < 500, response.text
    if response.status_code != 200:  # an unknown token is no error for revoke and introspect
        assert_oauth_error(response, 400)


# --- oversized bodies -------------------------------------------------------------------------------------


def _padded(endpoint: Endpoint) -> bytes:
    return form_body(endpoint.form or {}, ("pad", "a" * (LIMIT + 1)))


@pytest.mark.parametrize("endpoint", _ids(ENDPOINTS))
async def test_body_announced_over_64_kib_is_413(
    auth_client: httpx.AsyncClient, database_url: str, endpoint: Endpoint
) -> None:
    body = _padded(endpoint)
    response = await send(
        auth_client, endpoint, headers=await credentials(auth_client, database_url, endpoint), content=body
    )
    assert "content-length" in response.request.headers
    assert_oauth_error(response, 413, "invalid_request")


@pytest.mark.parametrize("endpoint", _ids(FORM_ENDPOINTS))
async def test_body_streamed_over_64_kib_without_length_is_413(
    auth_client: httpx.AsyncClient, database_url: str, endpoint: Endpoint
) -> None:
    # Endpoints without a body never read one, so only the form endpoints can see a streamed body grow.
    response = await send(
        auth_client,
        endpoint,
        headers=await credentials(auth_client, database_url, endpoint),
        content=_chunks(_padded(endpoint)),
    )
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert_oauth_error(response, 413, "invalid_request")


async def test_body_of_exactly_64_kib_is_read(auth_client: httpx.AsyncClient) -> None:
    fields = [("grant_type", "implicit")] + [(f"p{i}", "a" * 4000) for i in range(16)]
    body = urlencode(fields).encode()
    body += b"&z=" + b"a" * (LIMIT - len(body) - 3)
    assert len(body) == LIMIT
    response = await send(auth_client, TOKEN, content=_chunks(body))
    assert_oauth_error(response, 400, "unsupported_grant_type")  # read, parsed and judged: not a 413


# --- bearer credentials -----------------------------------------------------------------------------------

BEARER_CASES = [
    # The Authorization header (None: absent) and the error code expected (None: a bare challenge).
    pytest.param(None, None, id="no-credentials"),
    pytest.param(b"Basic dXNlcjpwYXNz", None, id="wrong-scheme-basic"),
    pytest.param(b"Token abc.def.ghi", None, id="wrong-scheme-token"),
    pytest.param(b"Bearer", "invalid_request", id="scheme-without-token"),
    pytest.param(b"Bearer    ", "invalid_request", id="scheme-with-blank-token"),
    pytest.param(b"Bearer a b", "invalid_request", id="token-with-space"),
    pytest.param(b"Bearer " + b"a" * 9000, "invalid_request", id="oversized-header"),
    pytest.param("Bearer jéton".encode(), "invalid_request", id="non-ascii-utf8"),
    pytest.param(b"Bearer \xff\xfe\xfd", "invalid_request", id="non-ascii-latin1"),
    pytest.param(b"Bearer garbage", "invalid_token", id="garbage-token"),
    pytest.param(b"Bearer a.b.c", "invalid_token", id="garbage-jwt-shape"),
    pytest.param(b"Bearer !!!.???.###", "invalid_token", id="garbage-jwt-bad-base64"),
    pytest.param(b"Bearer " + _unsigned_jwt().encode(), "invalid_token", id="alg-none-jwt"),
]


@pytest.mark.parametrize(("authorization", "error"), BEARER_CASES)
@pytest.mark.parametrize("endpoint", _ids(BEARER_ENDPOINTS))
async def test_bad_bearer_credentials_get_an_rfc6750_challenge(
    auth_client: httpx.AsyncClient, endpoint: Endpoint, authorization: bytes | None, error: str | None
) -> None:
    headers = {} if authorization is None else {"authorization": authorization}
    body = form_body(endpoint.form) if endpoint.form is not None else None
    response = await send(auth_client, endpoint, headers=headers, content=body)
    # RFC 6750 §3.1: invalid_request is answered 400, invalid_token and missing credentials 401.
    params = bearer_challenge(response, 400 if error == "invalid_request" else 401)
    assert params["realm"] == "tokenlife"
    if error is None:
        assert set(params) == {"realm"}, params  # RFC 6750 §3.1: no error code without credentials
        # The body still names the problem, with the code the resource service uses for the same case.
        assert response.json()["error"] == "missing_token", response.text
    else:
        assert params.get("error") == error, params
        assert params.get("error_description"), params
        assert response.json()["error"] == error


async def test_revoked_access_token_is_invalid_token(
    auth_client: httpx.AsyncClient, access_token: str
) -> None:
    revoked = await auth_client.post("/oauth/revoke", data={"token": access_token})
    assert revoked.status_code == 200, revoked.text
    response = await auth_client.get("/v1/sessions", headers={"authorization": f"Bearer {access_token}"})
    params = bearer_challenge(response)
    assert params["error"] == "invalid_token"
    assert params["error_description"]


# --- service (HTTP Basic) credentials ---------------------------------------------------------------------

BASIC_CASES = [
    pytest.param(None, id="no-credentials"),
    pytest.param(b"Bearer abc", id="wrong-scheme-bearer"),
    pytest.param(b"Basic", id="scheme-without-credentials"),
    pytest.param(b"Basic !!!not-base64!!!", id="garbage-base64"),
    pytest.param(_basic(SERVICE_CLIENT[0]), id="no-colon"),
    pytest.param(_basic(b"\xff\xfe", b"\xfd"), id="invalid-utf8-inside"),
    pytest.param(_basic(SERVICE_CLIENT[0], "wrong secret"), id="wrong-secret"),
    pytest.param(_basic("someone-else", SERVICE_CLIENT[1]), id="unknown-client"),
    pytest.param(_basic(SERVICE_CLIENT[0], SERVICE_CLIENT[1] + "é"), id="non-ascii-secret"),
    pytest.param(b"Basic " + b"QUFB" * 3000, id="oversized-header"),
    pytest.param("Basic dGVzdC1zZXJ2aWNlOnjDqQ==é".encode(), id="non-ascii-header"),
    pytest.param(b"Basic \xff\xfe", id="non-ascii-latin1-header"),
]


@pytest.mark.parametrize("authorization", BASIC_CASES)
@pytest.mark.parametrize("endpoint", _ids(BASIC_ENDPOINTS))
async def test_bad_service_credentials_are_invalid_client(
    auth_client: httpx.AsyncClient, endpoint: Endpoint, authorization: bytes | None
) -> None:
    headers = {} if authorization is None else {"authorization": authorization}
    body = form_body(endpoint.form) if endpoint.form is not None else None
    response = await send(auth_client, endpoint, headers=headers, content=body)
    assert_oauth_error(response, 401, "invalid_client")
    assert response.headers["www-authenticate"] == 'Basic realm="tokenlife"'


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(b"Basic !!!", id="garbage-basic"),
        pytest.param(b"Bearer " + b"a" * 9000, id="oversized"),
        pytest.param("Bearer jéton".encode(), id="non-ascii"),
    ],
)
@pytest.mark.parametrize("endpoint", _ids([TOKEN, REVOKE]))
async def test_public_endpoints_judge_the_body_whatever_the_authorization_header(
    auth_client: httpx.AsyncClient, endpoint: Endpoint, authorization: bytes
) -> None:
    # The token and revocation endpoints take no client authentication ("none" in the metadata).
    response = await send(auth_client, endpoint, headers={"authorization": authorization}, content=b"")
    assert_oauth_error(response, 400, "invalid_request")


# --- query and path parameters ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        pytest.param("after=-1", id="after-negative"),
        pytest.param("after=abc", id="after-not-a-number"),
        pytest.param("after=", id="after-empty"),
        pytest.param("after=1.5", id="after-fraction"),
        pytest.param(f"after={2**63}", id="after-over-bigint"),
        pytest.param("after=%ff", id="after-invalid-utf8"),
        pytest.param("limit=0", id="limit-zero"),
        pytest.param("limit=-5", id="limit-negative"),
        pytest.param("limit=abc", id="limit-not-a-number"),
        pytest.param("limit=1001", id="limit-over-page"),
        pytest.param("after=0&after=5", id="after-repeated"),
        pytest.param("limit=1&limit=1000", id="limit-repeated"),
    ],
)
async def test_bad_events_query_is_invalid_request(auth_client: httpx.AsyncClient, query: str) -> None:
    response = await send(auth_client, EVENTS, headers={"authorization": SERVICE_BASIC}, params=query)
    assert_oauth_error(response, 400, "invalid_request")


BAD_SIDS = [
    pytest.param("not-a-uuid", id="words"),
    pytest.param("12345", id="number"),
    pytest.param("%00", id="nul"),
    pytest.param("%C3%A9", id="non-ascii"),
    pytest.param("00000000-0000-0000-0000-0000000000000", id="uuid-plus-one-digit"),
    pytest.param("x" * 2000, id="long"),
]


@pytest.mark.parametrize("sid", BAD_SIDS)
@pytest.mark.parametrize("endpoint", _ids([DELETE_SESSION, SESSION_EVENTS]))
async def test_malformed_session_id_is_not_found(
    auth_client: httpx.AsyncClient, access_token: str, endpoint: Endpoint, sid: str
) -> None:
    path = endpoint.path.replace(SID, sid)
    response = await send(
        auth_client, endpoint, headers={"authorization": f"Bearer {access_token}".encode()}, path=path
    )
    assert_oauth_error(response, 404, "not_found")


@pytest.mark.parametrize("endpoint", _ids([DELETE_SESSION, SESSION_EVENTS]))
async def test_unknown_session_id_is_not_found(
    auth_client: httpx.AsyncClient, access_token: str, endpoint: Endpoint
) -> None:
    response = await send(auth_client, endpoint, headers={"authorization": f"Bearer {access_token}".encode()})
    assert_oauth_error(response, 404, "not_found")


@pytest.mark.parametrize(
    "endpoint",
    [
        pytest.param(DELETE_SESSION, id=DELETE_SESSION.name),
        pytest.param(SESSION_EVENTS, id=SESSION_EVENTS.name),
    ],
)
async def test_malformed_session_id_without_credentials_is_401(
    auth_client: httpx.AsyncClient, endpoint: Endpoint
) -> None:
    response = await send(auth_client, endpoint, path=endpoint.path.replace(SID, "not-a-uuid"))
    assert set(bearer_challenge(response)) == {"realm"}
