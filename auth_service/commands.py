"""Commands of the auth service: migrate, log rebuild, serve, users, keys.

Each command imports what it runs when it runs: the `tokenlife` command line registers every service's
commands, and `tokenlife resource serve` must not pay for the auth service's database layer or hash anything.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

from auth_service.errors import NoSigningKey
from auth_service.settings import AuthSettings


def _say(text: str) -> None:
    print(text)  # noqa: T201 - a command's answer


def _complain(text: str) -> None:
    print(f"tokenlife: {text}", file=sys.stderr)  # noqa: T201 - a command's refusal, in one line


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from auth_service.app import create_app
    from looplag import freeze_startup_heap

    settings = AuthSettings()
    try:
        asyncio.run(_check_database(settings))
    except NoSigningKey as exc:
        _complain(exc.description)
        return 1
    # Open event streams (GET /v1/me/events/stream) would hold a stop for as long as their tokens live:
    # cut them after a few seconds; their clients reconnect, with the last position, to another instance.
    app = create_app(settings)
    freeze_startup_heap()
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    return 0


async def _check_database(settings: AuthSettings) -> None:
    """What the server's start-up needs of the database, checked before it binds: that it answers, holds the
    schema, and has an active signing key (dev mode makes one). A failure here is one line from the command
    line (tokenlife/errors.py); the same failure inside the server's start-up would be a traceback."""
    from auth_service.app import load_keys
    from auth_service.db.engine import create_engine

    engine = create_engine(settings.database_url, pool_size=1)
    try:
        await load_keys(settings, engine)
    finally:
        await engine.dispose()


def _read_password(email: str) -> str:
    if sys.stdin.isatty():
        first = getpass.getpass(f"password for {email}: ")
        if getpass.getpass("again: ") != first:
            raise ValueError("the passwords differ")
        return first
    return sys.stdin.readline().rstrip("\n")


def add_user_command(raw_email: str, scope: str, database: Callable[[], AbstractContextManager[str]]) -> int:
    """`user add`: check the email, read and check the password, add the user to `database()`'s URL.

    Shared by `tokenlife user add` and `tokenlife dev user add`, which differ only in where the database is;
    the email is checked before anything is asked or started. Returns the exit status.
    """
    from auth_service.accounts.passwords import check_new_password
    from auth_service.accounts.users import UserExists, add_user, normalise_email

    try:
        email = normalise_email(raw_email)
        password = _read_password(email)
        check_new_password(password)
    except ValueError as exc:
        _complain(str(exc))
        return 2
    with database() as database_url:
        try:
            user_id = asyncio.run(add_user(database_url, email, password, " ".join(scope.split())))
        except UserExists as exc:
            _complain(str(exc))
            return 1
    _say(f"user {email} added with id {user_id}")
    return 0


def _user_add_cmd(args: argparse.Namespace) -> int:
    database_url = AuthSettings().database_url  # a configuration error comes before the password prompt
    return add_user_command(args.email, args.scope, lambda: nullcontext(database_url))


async def _user_revoke(settings: AuthSettings, email: str) -> int:
    from datetime import UTC, datetime

    import asyncpg
    from sqlalchemy import select

    from auth_service.accounts.backoff import BackoffRule
    from auth_service.accounts.throttle import LoginThrottle
    from auth_service.context import AuthContext
    from auth_service.db.engine import asyncpg_dsn, create_engine
    from auth_service.db.tables import users
    from auth_service.log.writer import LogWriter
    from auth_service.tokens.keyring import KeyRing
    from auth_service.tokens.keys import KeyCache
    from auth_service.use_cases.revoke import revoke_user

    engine = create_engine(settings.database_url, pool_size=1)
    dsn = asyncpg_dsn(settings.database_url)
    try:
        async with engine.connect() as conn:
            found = await conn.execute(select(users.c.user_id).where(users.c.email == email))
            user_id = found.scalar_one_or_none()
        if user_id is None:
            _say(f"tokenlife: no user with email {email}")
            return 1
        # Revoking needs no signing key: an empty ring will do.
        ring = KeyRing(None, {"keys": []}, {}, loaded_at=datetime.now(UTC))
        keys = KeyCache(ring, settings.key_encryption_key.get_secret_value(), settings.access_token_ttl)
        async with (
            asyncpg.create_pool(dsn, min_size=1, max_size=1) as pg,
            LogWriter.running(
                dsn,
                lock_timeout_ms=settings.lock_timeout_ms,
                access_token_ttl=settings.access_token_ttl,
                refresh_grace=settings.refresh_grace_seconds,
            ) as writer,
        ):
            ctx = AuthContext(settings, engine, keys, LoginThrottle(BackoffRule()), pg, writer)
            [event] = await revoke_user(ctx, str(user_id), "operator")
        _say(f"revoked every token and session of {email} (position {event.position})")
        return 0
    finally:
        await engine.dispose()


def _user_revoke_cmd(args: argparse.Namespace) -> int:
    return asyncio.run(_user_revoke(AuthSettings(), args.email.strip().lower()))


async def _keys(settings: AuthSettings, action: str, kid: str | None) -> int:
    from sqlalchemy import select

    from auth_service.db.engine import asyncpg_dsn, create_engine
    from auth_service.db.tables import signing_keys
    from auth_service.log.writer import LogWriter
    from auth_service.tokens import keys as keystore

    engine = create_engine(settings.database_url, pool_size=1)
    kek = settings.key_encryption_key.get_secret_value()
    try:
        async with engine.begin() as conn:
            if action == "rotate":
                new_kid = await keystore.rotate(conn, kek, settings.signing_algorithm)
                _say(f"new active signing key {new_kid} ({settings.signing_algorithm})")
            elif action == "revoke":
                assert kid is not None
                # Through a log writer of its own, as every append is (log/writer.py).
                async with LogWriter.running(
                    asyncpg_dsn(settings.database_url),
                    lock_timeout_ms=settings.lock_timeout_ms,
                    access_token_ttl=settings.access_token_ttl,
                ) as writer:
                    try:
                        event = await keystore.revoke(writer, conn, kid, kek, "operator")
                    except keystore.KeyError_ as exc:
                        _say(f"tokenlife: {exc}")
                        return 1
                if event is None:
                    _say(f"key {kid} was revoked already")
                else:
                    _say(f"key {kid} revoked (position {event.position})")
            else:
                rows = await conn.execute(select(signing_keys).order_by(signing_keys.c.created_at))
                for r in rows:
                    state = "revoked" if r.revoked_at else "retired" if r.retired_at else "active"
                    _say(f"{r.kid}  {r.alg}  {state:8}  created {r.created_at.isoformat()}")
        return 0
    finally:
        await engine.dispose()


def _migrate(args: argparse.Namespace) -> int:
    from auth_service.db.migrate import create_database, upgrade

    settings = AuthSettings()
    settings.announce()
    if args.create_database and asyncio.run(create_database(settings.database_url)):
        _say("created the database")
    upgrade(settings.database_url, args.revision)
    _say(f"schema at {args.revision}")
    return 0


def _log_rebuild(args: argparse.Namespace) -> int:
    from auth_service.maintenance import rebuild_projections

    settings = AuthSettings()
    settings.announce()
    replayed, pruned = asyncio.run(rebuild_projections(settings))
    _say(f"rebuilt projections from {replayed} events; pruned {pruned} expired revocations")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `migrate`, `log rebuild`, `auth serve`, `user add|revoke` and `keys rotate|revoke|list|kek`."""
    migrate = sub.add_parser("migrate", help="apply database migrations (a no-op when up to date)")
    migrate.add_argument("--revision", default="head")
    migrate.add_argument(
        "--create-database", action="store_true", help="create the database if it is missing"
    )
    migrate.set_defaults(func=_migrate)

    log_cmd = sub.add_parser("log", help="event log maintenance")
    log_sub = log_cmd.add_subparsers(dest="log_command", required=True)
    rebuild = log_sub.add_parser("rebuild", help="rebuild every projection from the log")
    rebuild.set_defaults(func=_log_rebuild)

    auth = sub.add_parser("auth", help="the auth service").add_subparsers(dest="auth_command", required=True)
    serve = auth.add_parser("serve", help="run the auth service (and its relay)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(func=_serve)

    user = sub.add_parser("user", help="manage users").add_subparsers(dest="user_command", required=True)
    add = user.add_parser("add", help="add a user; the password is read from stdin or a prompt")
    add.add_argument("email")
    add.add_argument("--scope", default="", help="space-separated scopes the user may be granted")
    add.set_defaults(func=_user_add_cmd)
    revoke = user.add_parser("revoke", help="revoke every token and session of a user")
    revoke.add_argument("email")
    revoke.set_defaults(func=_user_revoke_cmd)

    keys = sub.add_parser("keys", help="manage signing keys").add_subparsers(
        dest="keys_command", required=True
    )
    keys.add_parser("rotate", help="generate a new active key").set_defaults(
        func=lambda a: asyncio.run(_keys(AuthSettings(), "rotate", None))
    )
    rk = keys.add_parser("revoke", help="revoke a key and every token it signed")
    rk.add_argument("kid")
    rk.set_defaults(func=lambda a: asyncio.run(_keys(AuthSettings(), "revoke", a.kid)))
    keys.add_parser("list", help="list keys").set_defaults(
        func=lambda a: asyncio.run(_keys(AuthSettings(), "list", None))
    )
    keys.add_parser("kek", help="print a new key-encryption key").set_defaults(func=_kek)
    ssf = sub.add_parser("ssf", help="Shared Signals").add_subparsers(dest="ssf_command", required=True)
    st = ssf.add_parser("status", help="enable, pause or disable a stream (its receiver is told)")
    st.add_argument("stream_id")
    st.add_argument("status", choices=["enabled", "paused", "disabled"])
    st.add_argument("--reason", default="changed by the operator", help="the SET's and the status's reason")
    st.add_argument("--force", action="store_true", help="pause or disable now, not once the SET is taken")
    st.set_defaults(func=_ssf_status)
    registered = sub.add_parser("clients", help="registered clients")
    clients = registered.add_subparsers(dest="clients_command", required=True)
    secret_help = "print a new client secret and the secret_hash to register for it"
    clients.add_parser("secret", help=secret_help).set_defaults(func=_client_secret)


def _ssf_status(args: argparse.Namespace) -> int:
    from auth_service.ssf.updates import status_cli

    code, said = status_cli(AuthSettings(), args.stream_id, args.status, args.reason, force=args.force)
    (_say if code == 0 else _complain)(said)
    return code


def _kek(args: argparse.Namespace) -> int:
    from auth_service.tokens import keys as keystore

    _say(keystore.new_key_encryption_key())
    return 0


def _client_secret(args: argparse.Namespace) -> int:
    from auth_service.accounts.clients import new_secret, secret_hash

    secret = new_secret()
    _say(f"secret:      {secret}\nsecret_hash: {secret_hash(secret)}")
    return 0
