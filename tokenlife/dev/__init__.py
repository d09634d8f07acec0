"""`tokenlife dev`: the whole stack on this machine with nothing installed but Python.

Embedded PostgreSQL in a data directory (default `.tokenlife/`), migrated; a signing key; a demo user; the
auth service and the sample resource service as two processes, as in production. Without `--amqp` there is
no broker: the relay is off and the resource service long-polls the log. Nothing here reads
TOKENLIFE_DATABASE_URL or connects to the machine's own PostgreSQL or RabbitMQ. A service that crashes is
restarted; Ctrl-C (or SIGTERM, or closing the terminal) stops the services, then the database; the data stays
for the next start. A second `tokenlife dev` on the same data directory is refused.
`tokenlife dev user add EMAIL` adds a user to that database, running or not.

    stack       the command: start, supervise, stop on any way out
    supervisor  the services as child processes, restarted when they crash
    database    the stack's database: prepared, the demo user, found while it runs
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["register"]


def _dev(args: argparse.Namespace) -> int:
    from tokenlife.dev import stack

    return stack.run(args)


def _user_add(args: argparse.Namespace) -> int:
    from auth_service.commands import add_user_command
    from tokenlife import embedded_db
    from tokenlife.dev.database import stack_database

    data_dir: Path = args.data_dir.expanduser().resolve()
    try:
        return add_user_command(args.email, args.scope, lambda: stack_database(data_dir))
    except embedded_db.AlreadyRunning as exc:
        print(f"tokenlife: {exc}", file=sys.stderr)  # noqa: T201 - one line, as every refusal
        return 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `dev` and `dev user add`."""
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
    user = dev.add_subparsers(
        dest="dev_command", title="commands", description="none: run the stack", metavar="[user add EMAIL]"
    ).add_parser("user", help="manage the dev stack's users")
    add = user.add_subparsers(dest="user_command", required=True).add_parser(
        "add", help="add a user to the dev stack's database (running or not); password from stdin or a prompt"
    )
    add.add_argument("email")
    # Also after `user add`; given nowhere, the `dev` parser's default stands.
    add.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS, help="default: .tokenlife")
    add.add_argument("--scope", default="read write", help='space-separated scopes (default: "read write")')
    add.set_defaults(func=_user_add)
