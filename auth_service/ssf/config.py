"""A stream's configuration (SSF 1.0 §8.1.1): what a receiver may send, checked, and what it reads back.
Pure: no I/O. A request that cannot be accepted raises InvalidRequest with the reason.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from auth_service.contract.events import describe
from auth_service.errors import InvalidRequest
from auth_service.ssf.events import EVENTS_SUPPORTED, VERIFICATION
from auth_service.ssf.http1 import endpoint

PUSH: Literal["urn:ietf:rfc:8935"] = "urn:ietf:rfc:8935"
POLL: Literal["urn:ietf:rfc:8936"] = "urn:ietf:rfc:8936"
DELIVERY_METHODS = (PUSH, POLL)
Status = Literal["enabled", "paused", "disabled"]
# Appends a stream's ssf.stream_updated (stream id, status, reason): updates.announcer makes one.
Announce = Callable[[str, Status, str], Awaitable[None]]
MAX_URL = 2048
STREAM_ID = r"^[A-Za-z0-9_-]{1,64}$"  # ours are uuid hex; anything else is no stream of ours


class Delivery(BaseModel):
    """The delivery object a receiver sends: the method, and for push its endpoint and authorization."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    method: str = Field(max_length=64)
    endpoint_url: str | None = Field(default=None, max_length=MAX_URL)
    authorization_header: str | None = Field(default=None, max_length=4096, pattern=r"^[\x20-\x7e]*$")


class StreamRequest(BaseModel):
    """The receiver-supplied fields of a create, replace or update request (transmitter-supplied ones, if
    sent, are ignored as SSF says)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    stream_id: str | None = Field(default=None, pattern=STREAM_ID)
    delivery: Delivery | None = None
    events_requested: list[str] | None = Field(default=None, max_length=32)
    description: str | None = Field(default=None, max_length=512)


class StatusRequest(BaseModel):
    """A status update (SSF 1.0 §8.1.2.2)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    stream_id: str = Field(pattern=STREAM_ID)
    status: Status
    reason: str | None = Field(default=None, max_length=512)


class SubjectRequest(BaseModel):
    """Add or remove a subject (SSF 1.0 §8.1.3)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    stream_id: str = Field(pattern=STREAM_ID)
    subject: dict[str, Any]
    verified: bool = True


class VerificationRequest(BaseModel):
    """Ask for a verification event (SSF 1.0 §8.1.4.2)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    stream_id: str = Field(pattern=STREAM_ID)
    state: str | None = Field(default=None, max_length=256)


_Model = TypeVar("_Model", bound=BaseModel)


def _has_nul(value: Any) -> bool:
    # PostgreSQL refuses NUL in text and jsonb: refused here with a reason, not there with a 500.
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def parse(model: type[_Model], body: Any) -> _Model:
    """The request body as `model`, or InvalidRequest naming what is wrong."""
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    if _has_nul(body):
        raise InvalidRequest("the body contains a NUL character")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise InvalidRequest(describe(exc)[:500]) from None


@dataclass(frozen=True)
class Checked:
    """A delivery and the events requested, accepted."""

    method: str
    endpoint_url: str | None
    authorization_header: str | None
    events_requested: tuple[str, ...]


def check(delivery: Delivery | None, events: list[str] | None, *, allow_http: bool) -> Checked:
    """Accept a delivery and events_requested, or say why not: a method we do not offer, a push endpoint
    that is not an absolute https URL (http too in dev mode) the push client can send to (http1.endpoint:
    its port, host, no userinfo or fragment), an event type we do not send."""
    if delivery is None:
        raise InvalidRequest("delivery is required")
    if delivery.method not in DELIVERY_METHODS:
        raise InvalidRequest(
            f"delivery method {delivery.method[:64]!r} is not supported: {list(DELIVERY_METHODS)}"
        )
    url = delivery.endpoint_url
    if delivery.method == PUSH:
        if not url:
            raise InvalidRequest("push delivery needs delivery.endpoint_url")
        try:
            tls = endpoint(url).tls
        except ValueError as exc:
            raise InvalidRequest(f"delivery.endpoint_url: {exc}") from None
        if not tls and not allow_http:
            raise InvalidRequest("delivery.endpoint_url must be an absolute https URL")
    else:
        url = None  # poll: the transmitter supplies the URL (SSF 1.0 §8.1.1)
    requested = tuple(dict.fromkeys(events or ()))
    unknown = [e for e in requested if e not in EVENTS_SUPPORTED and e != VERIFICATION]
    if unknown:
        raise InvalidRequest(f"event type {unknown[0][:128]!r} is not supported: {list(EVENTS_SUPPORTED)}")
    header = delivery.authorization_header if delivery.method == PUSH else None
    return Checked(delivery.method, url, header, requested)


def events_delivered(requested: tuple[str, ...] | list[str]) -> list[str]:
    """What the stream gets: the supported events it asked for, in our order."""
    return [e for e in EVENTS_SUPPORTED if e in requested]


def configuration(row: Any, issuer: str, min_verification_interval: int = 0) -> dict[str, Any]:
    """A stream's configuration as SSF 1.0 §8.1.1 shows it (never the push authorization header back);
    `min_verification_interval` (seconds, transmitter-supplied) is shown when there is one."""
    requested = list(row["events_requested"])
    delivery: dict[str, Any] = {"method": row["delivery_method"]}
    if row["delivery_method"] == PUSH:
        delivery["endpoint_url"] = row["endpoint_url"]
    else:
        delivery["endpoint_url"] = f"{issuer.rstrip('/')}/ssf/poll/{row['stream_id']}"
    config: dict[str, Any] = {
        "stream_id": row["stream_id"],
        "iss": issuer,
        "aud": row["client_id"],
        "delivery": delivery,
        "events_supported": list(EVENTS_SUPPORTED),
        "events_requested": requested,
        "events_delivered": events_delivered(requested),
    }
    if row["description"]:
        config["description"] = row["description"]
    if min_verification_interval:
        config["min_verification_interval"] = min_verification_interval
    return config


def metadata(issuer: str) -> dict[str, Any]:
    """Transmitter configuration metadata (SSF 1.0 §7.1), every endpoint under the issuer."""
    return {
        "spec_version": "1_0",
        "issuer": issuer,
        "jwks_uri": f"{issuer}/.well-known/jwks.json",
        "delivery_methods_supported": list(DELIVERY_METHODS),
        "configuration_endpoint": f"{issuer}/ssf/streams",
        "status_endpoint": f"{issuer}/ssf/status",
        "add_subject_endpoint": f"{issuer}/ssf/subjects/add",
        "remove_subject_endpoint": f"{issuer}/ssf/subjects/remove",
        "verification_endpoint": f"{issuer}/ssf/verify",
        "critical_subject_members": ["user"],
        "authorization_schemes": [{"spec_urn": "urn:ietf:rfc:6749"}],
        "default_subjects": "ALL",
    }


def _inline(schema: Any, defs: dict[str, Any]) -> Any:
    if isinstance(schema, dict):
        ref = schema.get("$ref", "")
        if ref.startswith("#/$defs/"):
            return _inline(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inline(v, defs) for k, v in schema.items() if k != "$defs"}
    if isinstance(schema, list):
        return [_inline(v, defs) for v in schema]
    return schema


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI `requestBody` of a JSON route, from the model that parses it (its $defs inlined)."""
    schema = model.model_json_schema()
    inlined = _inline(schema, schema.get("$defs", {}))
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inlined}}}}
