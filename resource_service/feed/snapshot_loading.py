"""A snapshot body parsed, validated and folded into the state in steps, with an await between steps.

A cold start reads every live revocation (100k is a few MB of JSON). Parsing, validating and folding that in
one callback would hold the event loop for a good part of a second, stalling requests, heartbeats and the
broker session. Here each step handles a bounded number of values (json_steps parses, the contract's models
validate a slice of each column, a SnapshotLoader folds it into tables of its own), and the state swaps to
the new tables only at the end: a request served meanwhile sees the old state, whole.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from auth_service.contract import (
    ColumnarSnapshot,
    ContractError,
    Revocation,
    RevocationColumns,
    RevocationKind,
    RevocationSnapshot,
)
from resource_service.check.state import RevocationState, SnapshotLoader
from resource_service.feed.json_steps import parse_in_steps

__all__ = ["PARSE_STEP", "ROW_STEP", "load_snapshot"]

# Sized so that one step costs a few ms of CPU on a slow core, well under the 20 ms a callback may take.
PARSE_STEP = 4_000  # JSON values per parsing step (0.3 us each in runs of plain scalars, 1.5 us else)
ROW_STEP = 2_000  # revocations per validating and folding step (about 2 us each)

_COLUMNS = ("subjects", "expires_at", "positions", "not_before")
M = TypeVar("M", bound=BaseModel)
_revocation_list: TypeAdapter[list[Revocation]] = TypeAdapter(list[Revocation])


async def load_snapshot(
    state: RevocationState, body: bytes, *, parse_step: int = PARSE_STEP, row_step: int = ROW_STEP
) -> tuple[int, bool]:
    """Fold a snapshot body (either form) into the state; its position, and False if the state was past it.

    Anything malformed gives a ContractError, and the state is then left as it was.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ContractError(f"malformed snapshot JSON: not UTF-8 at byte {exc.start}") from None
    steps = parse_in_steps(text, parse_step)
    try:
        while True:
            next(steps)
            await asyncio.sleep(0)
    except StopIteration as done:
        obj = done.value
    except json.JSONDecodeError as exc:
        raise ContractError(f"malformed snapshot JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ContractError("a snapshot must be a JSON object")
    if obj.get("form") == "columns":
        return await _load_columns(state, obj, row_step)
    return await _load_objects(state, obj, row_step)


async def _load_columns(state: RevocationState, obj: dict[str, Any], step: int) -> tuple[int, bool]:
    columns = obj.get("columns")
    header = _validated(ColumnarSnapshot, {**obj, "columns": {}})
    if not isinstance(columns, dict):
        _validated(ColumnarSnapshot, obj)  # raises, saying why
        raise ContractError("invalid snapshot: columns is not an object")  # pragma: no cover
    loader = SnapshotLoader(state, header.position)
    if loader.refused:
        return header.position, False
    for name, lists in columns.items():
        try:
            kind = RevocationKind(name)
        except ValueError:
            raise ContractError(f"invalid snapshot: unknown revocation kind {name!r}") from None
        if not isinstance(lists, dict) or not _all_lists(lists):
            _validated(RevocationColumns, lists)  # raises, saying why
            raise ContractError(f"invalid snapshot: the {name} columns are not lists")  # pragma: no cover
        present = {n: lists[n] for n in _COLUMNS if lists.get(n) is not None}
        sizes = {len(values) for values in present.values()}
        if len(sizes) > 1:
            raise ContractError(f"invalid snapshot: the {name} columns differ in length")
        size = sizes.pop() if sizes else 0
        # One validation even for an empty kind, so a malformed empty one is refused like any other.
        for start in range(0, max(size, 1), step):
            part = {n: values[start : start + step] for n, values in present.items()}
            loader.feed_columns(kind, _validated(RevocationColumns, part))
            await asyncio.sleep(0)
    return header.position, loader.commit()


async def _load_objects(state: RevocationState, obj: dict[str, Any], step: int) -> tuple[int, bool]:
    revocations = obj.get("revocations")
    header = _validated(RevocationSnapshot, {**obj, "revocations": []})
    if not isinstance(revocations, list):
        _validated(RevocationSnapshot, obj)  # raises, saying why
        raise ContractError("invalid snapshot: revocations is not a list")  # pragma: no cover
    loader = SnapshotLoader(state, header.position)
    if loader.refused:
        return header.position, False
    for start in range(0, len(revocations), step):
        try:
            part = _revocation_list.validate_python(revocations[start : start + step])
        except ValidationError as exc:
            raise ContractError(f"invalid snapshot: revocations (from {start}): {_first(exc)}") from None
        loader.feed_revocations(part)
        await asyncio.sleep(0)
    return header.position, loader.commit()


def _all_lists(lists: dict[str, Any]) -> bool:
    required = all(isinstance(lists.get(n), list) for n in _COLUMNS[:3])
    return required and isinstance(lists.get("not_before"), list | None)


def _validated(model: type[M], obj: Any) -> M:
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise ContractError(f"invalid snapshot: {_first(exc)}") from None


def _first(exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in error["loc"]) or "(root)"
    return f"{where}: {error['msg']} ({exc.error_count()} errors)"
