"""Serves the console's files from the package and its small config document, with strict security headers.

The files are read once when the app is built: a fixed list, so no request path ever reaches the filesystem.
"""

from __future__ import annotations

from importlib import resources
from urllib.parse import urlsplit

from fastapi import APIRouter
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict

from auth_service.settings import AuthSettings

FILES = {
    "": ("index.html", "text/html; charset=utf-8"),
    "console.css": ("console.css", "text/css; charset=utf-8"),
    "console.js": ("console.js", "text/javascript; charset=utf-8"),
    "favicon.svg": ("favicon.svg", "image/svg+xml"),
}
CLIENT_ID = "tokenlife-console"


class ConsoleConfig(BaseModel):
    """What the console's page reads at start: the resource service it calls, and its client id."""

    model_config = ConfigDict(extra="forbid")

    resource_url: str | None
    client_id: str


def origin(url: str) -> str:
    """scheme://host[:port] of a URL ('' for an empty one)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""


def security_headers(resource_origin: str) -> dict[str, str]:
    """The headers every console response carries: no inline code, no framing, no sniffing, no referrer."""
    # The WebSocket origin too: the console opens the resource service's live feed (/v1/ticks).
    socket_origin = resource_origin.replace("http", "ws", 1) if resource_origin else ""
    connect = " ".join(filter(None, ["'self'", resource_origin, socket_origin]))
    policy = "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self'",
            f"connect-src {connect}",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )
    return {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
        "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
    }


def build_router(settings: AuthSettings) -> APIRouter:
    """The console's routes: /console/ (the page), its CSS and JavaScript, and /console/config.json."""
    static = resources.files(__package__).joinpath("static")
    bodies = {name: (static.joinpath(file).read_bytes(), kind) for name, (file, kind) in FILES.items()}
    resource_url = settings.console_resource_url or None
    headers = security_headers(origin(settings.console_resource_url))
    router = APIRouter(tags=["console"])

    @router.get("/console", include_in_schema=False)
    async def bare() -> Response:
        return RedirectResponse("/console/", status_code=308)

    @router.get(
        "/console/config.json",
        summary="Where the web console's resource service is, and its client id",
        responses={200: {"model": ConsoleConfig}},
    )
    async def config() -> Response:
        body = {"resource_url": resource_url, "client_id": CLIENT_ID}
        return JSONResponse(body, headers=headers | {"Cache-Control": "no-store"})

    def page(name: str) -> None:
        body, kind = bodies[name]

        async def serve() -> Response:
            return Response(body, media_type=kind, headers=headers | {"Cache-Control": "no-cache"})

        # HEAD too: link checkers and uptime probes ask with it, and a page that is there says 200 to both.
        router.add_api_route(f"/console/{name}", serve, methods=["GET", "HEAD"], include_in_schema=False)

    for name in FILES:
        page(name)
    return router
