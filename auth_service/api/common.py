"""Request plumbing shared by the routes: form bodies, bearer and service credentials, transactions."""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl

from fastapi import Request
from fastapi.security import HTTPBasic, OAuth2PasswordBearer
from sqlalchemy.ext.asyncio import AsyncConnection

from auth_service.context import AuthContext
from auth_service.errors import BearerError, InvalidClient, InvalidRequest, MissingToken
from auth_service.revoke import Principal, authenticate

FORM_TYPE = "application/x-www-form-urlencoded"


# Only there so the OpenAPI document declares the schemes (the docs' Authorize button logs in through the
# password grant); the credentials are read and judged by bearer_token() and service_client() below.
class _DeclaredBearer(OAuth2PasswordBearer):
    async def __call__(self, request: Request) -> None:  # type: ignore[override]
        return None


class _DeclaredBasic(HTTPBasic):
    async def __call__(self, request: Request) -> None:  # type: ignore[override]
        return None  # FastAPI's HTTPBasic answers malformed credentials itself, even with auto_error=False


openapi_bearer = _DeclaredBearer(tokenUrl="/oauth/token")
openapi_basic = _DeclaredBasic()


def form_body(*fields: tuple[str, bool]) -> dict[str, Any]:
    """OpenAPI `requestBody` for a form-encoded endpoint: (name, required) pairs, all strings."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                FORM_TYPE: {
                    "schema": {
                        "type": "object",
                        "properties": {name: {"type": "string"} for name, _ in fields},
                        "required": [name for name, needed in fields if needed],
                    }
                }
            },
        }
    }


MAX_HEADER = 8192
MAX_FIELD = 4096
# C0 controls and DEL, tab excepted: no field needs them, and PostgreSQL refuses NUL in text and jsonb.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def context(request: Request) -> AuthContext:
    """The app's shared context."""
    ctx: AuthContext = request.app.state.ctx
    return ctx


@asynccontextmanager
async def transaction(request: Request) -> AsyncIterator[AsyncConnection]:
    """One transaction for the request: committed before the handler answers, rolled back on error."""
    async with context(request).engine.begin() as conn:
        yield conn


async def form(request: Request) -> dict[str, str]:
    """A form-encoded body (RFC 6749 §3.2): UTF-8, each parameter at most once, no field over 4 KiB."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != FORM_TYPE:
        raise InvalidRequest(f"the body must be {FORM_TYPE}")
    raw = await request.body()
    try:
        text = raw.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text), errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequest("the body is not valid UTF-8 form encoding") from None
    fields: dict[str, str] = {}
    for name, value in pairs:
        if name in fields:
            raise InvalidRequest(f"parameter {name!r} is repeated")
        if len(value) > MAX_FIELD:
            raise InvalidRequest(f"parameter {name!r} is too long")
        if _CONTROL.search(name) or _CONTROL.search(value):
            raise InvalidRequest(f"parameter {name[:64]!r} contains a control character")
        fields[name] = value
    return fields


def required(fields: dict[str, str], name: str) -> str:
    """A parameter that must be present and not empty."""
    value = fields.get(name, "")
    if not value:
        raise InvalidRequest(f"missing parameter {name!r}")
    return value


def bearer_token(request: Request) -> str:
    """The token of an `Authorization: Bearer` header (RFC 6750 §2.1)."""
    header = request.headers.get("authorization")
    if header is None:
        raise MissingToken("authentication required")
    if len(header) > MAX_HEADER or not header.isascii():
        raise BearerError("malformed Authorization header")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer":
        # RFC 6750 §3.1: another scheme means no bearer credentials at all, so a bare challenge.
        raise MissingToken("authentication required (Bearer)")
    if not token or " " in token:
        raise BearerError("expected 'Authorization: Bearer <token>'")
    return token


async def principal(request: Request, conn: AsyncConnection) -> Principal:
    """The caller, from a valid, unrevoked access token."""
    return await authenticate(conn, context(request), bearer_token(request))


def service_client(request: Request) -> str:
    """The service client authenticated with HTTP Basic (client_secret_basic); its id."""
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded or len(header) > MAX_HEADER:
        raise InvalidClient("service client authentication required (HTTP Basic)")
    try:
        client_id, sep, secret = (
            base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
        )
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidClient("malformed Basic credentials") from None
    expected = context(request).settings.service_clients.get(client_id)
    # Compare even for an unknown client, so the answer takes the same time either way.
    reference = expected.get_secret_value() if expected else "\x00" * 32
    if not sep or not hmac.compare_digest(secret.encode(), reference.encode()) or expected is None:
        raise InvalidClient("unknown service client or wrong secret")
    return client_id
