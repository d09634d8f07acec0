"""The command line's failures in one line: a bad setting, and a database it cannot use.

What a newcomer or an operator gets wrong first (a variable that is not JSON, a value out of range, a
database that is down, missing, not migrated or refusing the role) is said in one line that names the
environment variable or the database, never the pydantic field, and never with a traceback. Anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import re
import typing

from pydantic import ValidationError
from pydantic_settings import SettingsError

from auth_service.settings import AuthSettings, UnsafeSettings
from resource_service.settings import ResourceSettings, UnsafeResourceSettings

__all__ = ["configuration_problem", "database_problem"]

ENV_PREFIX = "TOKENLIFE_"  # both services' settings read TOKENLIFE_<FIELD>


def _variable(field: object) -> str:
    return f"{ENV_PREFIX}{str(field).upper()}"


def _json_kind(field: str) -> str:
    """What the field's variable holds: a JSON list or a JSON object."""
    for settings in (AuthSettings, ResourceSettings):
        info = settings.model_fields.get(field)
        if info is None:
            continue
        kinds = [typing.get_origin(arg) or arg for arg in typing.get_args(info.annotation)]
        kinds.append(typing.get_origin(info.annotation) or info.annotation)
        if dict in kinds:
            return 'a JSON object, e.g. {"name": ...}'
        if tuple in kinds or list in kinds:
            return 'a JSON list, e.g. ["a", "b"]'
    return "JSON"


def _unreadable(exc: SettingsError) -> str:
    """pydantic-settings says which field it could not parse; we say which variable, and why."""
    found = re.search(r'field "(\w+)"', str(exc))
    if found is None:
        return str(exc)
    field, cause = found.group(1), exc.__cause__
    if isinstance(cause, json.JSONDecodeError):
        where = f"{cause.msg} at character {cause.pos}"
        return f"{_variable(field)} is not valid JSON ({where}): it takes {_json_kind(field)}"
    return f"{_variable(field)} cannot be read: {cause or exc}"


def _invalid(error: typing.Mapping[str, typing.Any]) -> str:
    location = [str(part) for part in error["loc"]]
    message = str(error["msg"]).removeprefix("Value error, ")
    if not location:
        return message
    inner = f" ({'.'.join(location[1:])})" if len(location) > 1 else ""
    return f"{_variable(location[0])}{inner}: {message}"  # the message only: the value may be a secret


def configuration_problem(exc: BaseException) -> str | None:
    """What is wrong with the settings, naming environment variables; None when `exc` is no settings error."""
    if isinstance(exc, SettingsError):
        return _unreadable(exc)
    if isinstance(exc, ValidationError):
        return "; ".join(_invalid(error) for error in exc.errors())
    if isinstance(exc, (UnsafeSettings, UnsafeResourceSettings)):
        return str(exc)  # already written for the operator: every unsafe setting, one to a line
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    found: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(found) < 10:
        found.append(current)
        current = current.__cause__ or current.__context__
    return found


def _where() -> str:
    """Which database the command was pointed at (no password), or '' if the settings cannot say."""
    from sqlalchemy.engine import make_url

    try:
        url = make_url(AuthSettings().database_url)
    except Exception:  # the settings were read once already; whatever fails now, the message goes without
        return ""
    host = str(url.query.get("host") or url.host or "localhost")
    return f' "{url.database}" at {host}' + ("" if host.startswith("/") else f":{url.port or 5432}")


def database_problem(exc: BaseException) -> str | None:
    """One line for a database that is down, missing, not migrated or refusing the role; None otherwise."""
    import asyncpg

    from auth_service.db import errors as db_errors

    chain = _chain(exc)
    for cause in chain:
        if isinstance(cause, asyncpg.InvalidCatalogNameError):
            return f"{cause} (`tokenlife migrate --create-database` creates it)"
        if isinstance(cause, asyncpg.InvalidAuthorizationSpecificationError):
            return f"the database{_where()} refused the connection: {cause}"
        if isinstance(cause, asyncpg.UndefinedTableError):
            return f"the database{_where()} has no tokenlife schema ({cause}): run `tokenlife migrate` first"
    # An OSError that names a file is about that file (a missing migration script, say), not the database.
    if db_errors.translate(exc) is None or any(getattr(c, "filename", None) for c in chain):
        return None
    root = chain[-1]
    return f"cannot reach the database{_where()}: {str(root) or type(root).__name__}"
