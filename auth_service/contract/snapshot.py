"""The snapshot shapes: every live revocation at one position of the log, in the object or the columnar form.

`GET /v1/revocations` answers RevocationSnapshot (one object per revocation) or, with `form=columns`,
ColumnarSnapshot (a few long lists per kind); `decode_snapshot` reads either.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from auth_service.contract.events import SCHEMA_VERSION, ContractError, describe


class RevocationKind(StrEnum):
    JTI = "jti"
    SESSION = "session"
    USER = "user"
    KEY = "key"
    GLOBAL = "global"


GLOBAL_SUBJECT = "*"


class Revocation(BaseModel):
    """One live revocation: a jti, a session, a key, or a not-before watermark for a user or everyone."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    kind: RevocationKind
    subject: str = Field(description="The jti, session id, user id or kid; '*' for the global watermark.")
    not_before: AwareDatetime | None = Field(
        default=None, description="For user and global watermarks: tokens with iat before this are revoked."
    )
    expires_at: AwareDatetime = Field(description="After this (plus leeway) no token it covers is alive.")
    position: int = Field(ge=1, description="The position of the last event that changed this entry.")


class RevocationSnapshot(BaseModel):
    """Every live revocation, consistent with exactly the log up to and including `position`."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: Literal[1] = SCHEMA_VERSION
    position: int = Field(ge=0)
    taken_at: AwareDatetime
    revocations: list[Revocation]


class RevocationColumns(BaseModel):
    """The live revocations of one kind, column by column: item i of every list is one revocation."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    subjects: list[str]
    expires_at: list[float] = Field(description="Seconds since the epoch.")
    positions: list[Annotated[int, Field(ge=1)]]
    not_before: list[float] | None = Field(
        default=None, description="Seconds since the epoch; for user and global watermarks only."
    )

    @model_validator(mode="after")
    def _same_length(self) -> RevocationColumns:
        size = len(self.subjects)
        if len(self.expires_at) != size or len(self.positions) != size:
            raise ValueError("columns differ in length")
        if self.not_before is not None and len(self.not_before) != size:
            raise ValueError("columns differ in length")
        return self


class ColumnarSnapshot(BaseModel):
    """The same content as RevocationSnapshot in a compact form (`GET /v1/revocations?form=columns`).

    A cold start with many live revocations reads this one: a few long lists instead of an object with two
    timestamps per revocation, so it is smaller on the wire and folds in without a model per row.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: Literal[1] = SCHEMA_VERSION
    form: Literal["columns"] = "columns"
    position: int = Field(ge=0)
    taken_at: AwareDatetime
    columns: dict[RevocationKind, RevocationColumns]


def decode_snapshot(raw: bytes | str) -> ColumnarSnapshot | RevocationSnapshot:
    """Decode a snapshot in either form; anything else gives a ContractError."""
    # json.loads, then validation of the plain lists: as fast as validating the JSON text directly, and the
    # process keeps less of the parser's transient memory afterwards (measured by bench/memory.py).
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ContractError(f"malformed snapshot JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ContractError("a snapshot must be a JSON object")
    model: type[ColumnarSnapshot] | type[RevocationSnapshot] = (
        ColumnarSnapshot if obj.get("form") == "columns" else RevocationSnapshot
    )
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise ContractError(f"invalid snapshot: {describe(exc)}") from None
