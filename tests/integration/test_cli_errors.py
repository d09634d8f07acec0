"""The command line's failures, run as a user runs them: one line on stderr, no traceback, a non-zero status.

In production mode with every required setting given, so nothing else (the dev-mode warning) is printed:
whatever stderr holds is the failure's own line.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy.engine import make_url

from auth_service.tokens.keys import new_key_encryption_key
from tests.conftest import _admin, _with_database, free_port

pytestmark = pytest.mark.integration


def tokenlife(*args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    """Run `tokenlife ARGS` in production mode, with only the TOKENLIFE_* variables given here and below."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TOKENLIFE_")} | {
        "TOKENLIFE_ENV": "prod",
        "TOKENLIFE_ISSUER": "http://127.0.0.1:8000",
        "TOKENLIFE_KEY_ENCRYPTION_KEY": new_key_encryption_key(),
        "TOKENLIFE_RELAY_ENABLED": "false",
        "TOKENLIFE_AUTH_URL": "http://127.0.0.1:8000",
        "TOKENLIFE_SERVICE_CLIENT_ID": "orders",
        "TOKENLIFE_SERVICE_CLIENT_SECRET": "a-long-enough-service-secret",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "tokenlife", *args],
        env=environ,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The failure's one line on stderr; the test fails if there is more, a traceback, or a zero status."""
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tokenlife: "), lines
    return lines[0]


def _nowhere() -> str:
    """A database URL whose port nothing listens on."""
    return f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/tokenlife"


def test_migrate_with_the_database_unreachable_fails_in_one_line() -> None:
    url = _nowhere()
    line = one_line(tokenlife("migrate", TOKENLIFE_DATABASE_URL=url))
    assert f'cannot reach the database "tokenlife" at 127.0.0.1:{make_url(url).port}' in line


def test_auth_serve_with_the_database_unreachable_fails_in_one_line_before_it_binds() -> None:
    port = free_port()
    result = tokenlife("auth", "serve", "--port", str(port), TOKENLIFE_DATABASE_URL=_nowhere())
    assert "cannot reach the database" in one_line(result)


@pytest.fixture
def unmigrated_database(postgres_server_url: str) -> Iterator[str]:
    """An empty database (no schema) of this test's own."""
    name = f"tokenlife_test_empty_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(postgres_server_url, f'CREATE DATABASE "{name}"'))
    try:
        yield _with_database(postgres_server_url, name)
    finally:
        asyncio.run(_admin(postgres_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_auth_serve_on_a_database_without_the_schema_says_to_migrate(unmigrated_database: str) -> None:
    result = tokenlife(
        "auth", "serve", "--port", str(free_port()), TOKENLIFE_DATABASE_URL=unmigrated_database
    )
    assert "run `tokenlife migrate` first" in one_line(result)


@pytest.mark.parametrize("scheme", ["postgres", "postgresql"])
def test_the_usual_postgresql_url_spellings_are_taken(database_url: str, scheme: str) -> None:
    spelled = f"{scheme}://{database_url.partition('://')[2]}"
    result = tokenlife("migrate", TOKENLIFE_DATABASE_URL=spelled)
    assert result.returncode == 0, result.stderr
    assert "schema at head" in result.stdout


@pytest.mark.parametrize("url", ["mysql://ada:hunter2@db/app", "postgresql+psycopg2://ada:hunter2@db/app"])
def test_another_database_url_is_refused_in_one_line_saying_which_form_is_wanted(url: str) -> None:
    line = one_line(tokenlife("migrate", TOKENLIFE_DATABASE_URL=url))
    assert line.startswith("tokenlife: configuration error: TOKENLIFE_DATABASE_URL: not a PostgreSQL URL")
    assert "postgresql://user:password@host:5432/database" in line
    assert "hunter2" not in line  # the URL's password is not echoed


@pytest.mark.parametrize(
    ("command", "variable", "value", "wanted"),
    [
        (("migrate",), "TOKENLIFE_CLIENTS", "{bad", "a JSON object"),
        (("resource", "serve"), "TOKENLIFE_AUTH_URLS", "http://x", "a JSON list"),
    ],
)
def test_a_setting_that_is_not_json_names_its_variable_in_one_line(
    command: tuple[str, ...], variable: str, value: str, wanted: str
) -> None:
    line = one_line(tokenlife(*command, **{variable: value, "TOKENLIFE_DATABASE_URL": _nowhere()}))
    assert line.startswith(f"tokenlife: configuration error: {variable} is not valid JSON"), line
    assert wanted in line


def test_a_value_out_of_range_names_its_variable_in_one_line() -> None:
    env = {"TOKENLIFE_ACCESS_TOKEN_TTL": "5", "TOKENLIFE_CLIENTS": '{"web": {"type": "nope"}}'}
    line = one_line(tokenlife("migrate", TOKENLIFE_DATABASE_URL=_nowhere(), **env))
    assert "TOKENLIFE_ACCESS_TOKEN_TTL: Input should be greater than or equal to 10" in line
    assert "TOKENLIFE_CLIENTS (web.type): Input should be 'public' or 'confidential'" in line


async def _emails(database_url: str) -> list[str]:
    import asyncpg

    from auth_service.db.engine import asyncpg_dsn

    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        return [row["email"] for row in await conn.fetch("SELECT email FROM users")]
    finally:
        await conn.close()


def test_user_add_refuses_what_is_not_an_email_and_adds_nobody(database_url: str) -> None:
    result = tokenlife(
        "user", "add", "not-an-email", stdin="a long enough password\n", TOKENLIFE_DATABASE_URL=database_url
    )
    assert result.returncode == 2
    assert (
        one_line(result)
        == "tokenlife: 'not-an-email' is not an email address: An email address must have an @-sign."
    )
    assert asyncio.run(_emails(database_url)) == []

    added = tokenlife(
        "user",
        "add",
        " Ada@Example.COM ",
        stdin="a long enough password\n",
        TOKENLIFE_DATABASE_URL=database_url,
    )
    assert added.returncode == 0, added.stderr
    assert asyncio.run(_emails(database_url)) == ["ada@example.com"]
