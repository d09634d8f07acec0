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
from auth_service.relay import cli as relay_commands
from resource_service import commands as resource_commands
from tokenlife import dev, errors


def build_parser() -> argparse.ArgumentParser:
    """The parser for every tokenlife command."""
    parser = argparse.ArgumentParser(prog="tokenlife", description="Immediate JWT revocation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True)

    auth_commands.register(sub)
    relay_commands.register(sub)
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
