"""Every route the OpenAPI document declares protected refuses a request without (or with bad) credentials,
and the routes that declare nothing are exactly the known public ones."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest

from auth_service.app import create_app
from auth_service.settings import AuthSettings

pytestmark = pytest.mark.integration

PUBLIC = {
    ("POST", "/oauth/token"),
    ("POST", "/oauth/revoke"),
    ("GET", "/.well-known/jwks.json"),
    ("GET", "/.well-known/oauth-authorization-server"),
    ("GET", "/.well-known/ssf-configuration"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
    # Their assets, served from the package (auth_service/api/docs.py), never from a CDN.
    ("GET", "/docs/swagger-ui-bundle.js"),
    ("GET", "/docs/swagger-ui.css"),
    ("GET", "/docs/favicon.png"),
    ("GET", "/redoc/redoc.standalone.js"),
    # The web console's page, files and config: public, like any login page.
    ("GET", "/console"),
    ("GET", "/console/"),
    ("GET", "/console/config.json"),
    ("GET", "/console/console.css"),
    ("GET", "/console/console.js"),
    ("GET", "/console/favicon.svg"),
}
FORM = {"content-type": "application/x-www-form-urlencoded"}
BEARER_SCHEMES = {"OAuth2PasswordBearer", "SSFReceiver"}  # a user's token; a Shared Signals receiver's
BAD_BASIC = "Basic " + base64.b64encode(b"nobody:wrong").decode()


def _declared(app: Any) -> dict[tuple[str, str], set[str]]:
    """(method, path) -> the security schemes the OpenAPI document declares for it."""
    declared: dict[tuple[str, str], set[str]] = {}
    for path, operations in app.openapi()["paths"].items():
        for method, operation in operations.items():
            schemes = {name for requirement in operation.get("security", []) for name in requirement}
            declared[(method.upper(), path)] = schemes
    return declared


def _routes(routes: list[Any], prefix: str = "") -> list[tuple[str, str]]:
    """Every (method, path) the app serves, through included routers too (FastAPI nests them)."""
    found: list[tuple[str, str]] = []
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            found += _routes(included.routes, prefix + route.include_context.prefix)
            continue
        methods: set[str] = getattr(route, "methods", None) or set()
        found += [(method, prefix + route.path) for method in methods - {"HEAD"}]
    return sorted(found)


def _url(path: str) -> str:
    return path.replace("{sid}", "00000000-0000-4000-8000-000000000000")


async def test_every_declared_scheme_is_enforced_and_only_known_routes_are_public(
    auth_settings: AuthSettings,
) -> None:
    app = create_app(auth_settings)
    declared = _declared(app)
    protected = {route: schemes for route, schemes in declared.items() if schemes}
    assert protected, "the document declares no protected route at all"
    served = _routes(app.routes)
    assert set(declared) <= set(served)
    public = {route for route in served if not declared.get(route)}
    assert public == PUBLIC
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://auth.test") as client:
            for (method, path), schemes in sorted(protected.items()):
                assert len(schemes) == 1, (method, path, schemes)
                [scheme] = schemes
                bad = "Bearer not-a-token" if scheme in BEARER_SCHEMES else BAD_BASIC
                for headers in ({}, {"authorization": bad}):
                    response = await client.request(
                        method, _url(path), headers={**FORM, **headers}, content=b""
                    )
                    assert response.status_code == 401, (method, path, headers, response.text)
                    challenge = response.headers["www-authenticate"]
                    assert challenge.startswith("Bearer" if scheme in BEARER_SCHEMES else "Basic"), (
                        method,
                        path,
                    )
            for method, path in sorted(PUBLIC - {("GET", "/docs/oauth2-redirect")}):
                response = await client.request(method, _url(path), headers=FORM, content=b"")
                assert response.status_code != 401, (method, path, response.text)
