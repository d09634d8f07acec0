"""Form-encoded bodies (RFC 6749 §3.2): parsing them strictly, and declaring them in the OpenAPI document."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

from fastapi import Request

from auth_service.errors import InvalidRequest

FORM_TYPE = "application/x-www-form-urlencoded"


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


MAX_FIELD = 4096
# C0 controls and DEL, tab excepted: no field needs them, and PostgreSQL refuses NUL in text and jsonb.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


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
