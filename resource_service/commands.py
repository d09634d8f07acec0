"""Commands of the resource service: `tokenlife resource serve`."""

from __future__ import annotations

import argparse
import sys

from resource_service.settings import ResourceSettings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from looplag import freeze_startup_heap
    from resource_service.app import create_app

    settings = ResourceSettings()  # a configuration error is said by the command line, in one line
    if settings.transport == "stream" and settings.env != "dev":
        import asyncio

        from resource_service.feed.stream_client import StreamUnavailable, check_stream

        try:  # one clear line before uvicorn, whose lifespan failure would print a traceback
            asyncio.run(check_stream(settings))
        except StreamUnavailable as exc:
            print(f"tokenlife: {exc}", file=sys.stderr)  # noqa: T201
            return 2
    app = create_app(settings)
    freeze_startup_heap()
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=False)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `resource serve`."""
    resource = sub.add_parser("resource", help="the sample resource service").add_subparsers(
        dest="resource_command", required=True
    )
    serve = resource.add_parser("serve", help="run the sample resource service (and its revocation feed)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8001)
    serve.set_defaults(func=_serve)
