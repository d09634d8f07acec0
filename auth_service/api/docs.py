"""The interactive API documentation, /docs (Swagger UI) and /redoc (ReDoc), working with no network.

FastAPI's own pages load Swagger UI and ReDoc from a CDN, so offline (a laptop on a train, a closed network)
they are blank. The assets come instead from the fastapi-offline package (MIT; it bundles Swagger UI, Apache
2.0, and ReDoc, MIT), read once when the app is built and served from a fixed list of paths, like the
console's files: no request path ever reaches the filesystem.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, Response

__all__ = ["ASSETS", "install"]

# Served path -> (the file in fastapi_offline/static, its media type).
ASSETS = {
    "/docs/swagger-ui-bundle.js": ("swagger-ui-bundle.js", "text/javascript; charset=utf-8"),
    "/docs/swagger-ui.css": ("swagger-ui.css", "text/css; charset=utf-8"),
    "/docs/favicon.png": ("favicon.png", "image/png"),
    "/redoc/redoc.standalone.js": ("redoc.standalone.js", "text/javascript; charset=utf-8"),
}
_REDIRECT = "/docs/oauth2-redirect"
# Images from here only: ReDoc's sidebar otherwise fetches its maker's logo from a CDN on every view (it hides
# the image when that fails, so offline it only costs a failed request; this way no request leaves at all).
_IMAGES_HERE = {"Content-Security-Policy": "img-src 'self' data:"}


def install(app: FastAPI) -> None:
    """Serve /docs, its OAuth2 redirect page, /redoc and their assets; the app must have docs_url=None."""
    static = resources.files("fastapi_offline").joinpath("static")
    title = app.title

    def asset(path: str, file: str, kind: str) -> None:
        body = static.joinpath(file).read_bytes()

        async def serve() -> Response:
            # The files change only with the package: a day of caching spares every page view a download.
            return Response(body, media_type=kind, headers={"Cache-Control": "public, max-age=86400"})

        app.add_api_route(path, serve, methods=["GET"], include_in_schema=False)

    for path, (file, kind) in ASSETS.items():
        asset(path, file, kind)

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{title} - Swagger UI",
            oauth2_redirect_url=_REDIRECT,
            swagger_js_url="/docs/swagger-ui-bundle.js",
            swagger_css_url="/docs/swagger-ui.css",
            swagger_favicon_url="/docs/favicon.png",
        )
        page.headers.update(_IMAGES_HERE)
        return page

    @app.get(_REDIRECT, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        page = get_redoc_html(
            openapi_url="/openapi.json",
            title=f"{title} - ReDoc",
            redoc_js_url="/redoc/redoc.standalone.js",
            redoc_favicon_url="/docs/favicon.png",
            with_google_fonts=False,
        )
        page.headers.update(_IMAGES_HERE)
        return page
