"""Form-encoded bodies (RFC 6749 §3.2): parsing them strictly, and declaring them in the OpenAPI document."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

from fastapi import Request

from auth_service.errors import InvalidRequest

FORM_TYPE = "application/x-www-form-urlencoded"


MAX_FIELD = 4096
# C0 controls and DEL, tab excepted: no field needs them, and PostgreSQL refuses NUL in text and jsonb.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def text(min_length: int = 0, max_length: int | None = MAX_FIELD, **more: Any) -> dict[str, Any]:
    """The JSON Schema of a form field `form()` accepts: no control character, at most `max_length`."""
    schema: dict[str, Any] = {"type": "string", "pattern": "^[^\\x00-\\x08\\x0a-\\x1f\\x7f]*$", **more}
    if min_length:
        schema["minLength"] = min_length
    if max_length is not None:
        schema["maxLength"] = max_length
    return schema


def form_body(*variants: dict[str, Any], required: bool = True) -> dict[str, Any]:
    """OpenAPI `requestBody` of a form endpoint: one object schema, or the variants it accepts (oneOf)."""
    schema = variants[0] if len(variants) == 1 else {"oneOf": list(variants)}
    return {"requestBody": {"required": required, "content": {FORM_TYPE: {"schema": schema}}}}


def form_schema(required: tuple[str, ...] = (), **properties: dict[str, Any]) -> dict[str, Any]:
    """An object schema of form fields; any other well-formed field is accepted and ignored."""
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": text(),
        "propertyNames": {"pattern": text()["pattern"]},
    }
    if required:
        schema["required"] = list(required)
    return schema


async def form(request: Request, unbounded: tuple[str, ...] = ()) -> dict[str, str]:
    """A form-encoded body (RFC 6749 §3.2): UTF-8, each parameter at most once, no field over 4 KiB.

    Fields named in `unbounded` are limited by the body limit only: a token to revoke or introspect is never
    stored, and an overlong one is just an invalid token, which RFC 7009 and RFC 7662 answer with 200.
    """
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
        if len(value) > MAX_FIELD and name not in unbounded:
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
