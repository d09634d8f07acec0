"""The `tokenlife` command line.

Each service module that has commands exposes `register(subparsers)`; this module only assembles them and
turns configuration errors into a clear message and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from auth_service.settings import AuthSettings, UnsafeSettings

# Modules that add their own subcommands with register(subparsers).
COMMAND_MODULES: tuple[str, ...] = (
    "auth_service.commands",
    "auth_service.relay_cli",
    "resource_service.commands",
    "tokenlife.dev",
)


def _migrate(args: argparse.Namespace) -> int:
    from auth_service.migrate import create_database, upgrade

    settings = AuthSettings()
    settings.announce()
    if args.create_database and asyncio.run(create_database(settings.database_url)):
        print("created the database")  # noqa: T201 - a command's answer
    upgrade(settings.database_url, args.revision)
    print(f"schema at {args.revision}")  # noqa: T201 - a command's answer
    return 0


def _log_rebuild(args: argparse.Namespace) -> int:
    from auth_service.maintenance import rebuild_projections

    settings = AuthSettings()
    settings.announce()
    replayed, pruned = asyncio.run(rebuild_projections(settings))
    print(f"rebuilt projections from {replayed} events; pruned {pruned} expired revocations")  # noqa: T201
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The parser for every tokenlife command."""
    parser = argparse.ArgumentParser(prog="tokenlife", description="Immediate JWT revocation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True)

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

    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `tokenlife` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        return int(args.func(args))
    except (UnsafeSettings, ValidationError) as exc:
        print(f"tokenlife: configuration error: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
