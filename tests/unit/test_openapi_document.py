"""The auth service's OpenAPI document: exactly the routes it mounts, one error body, no 422."""

from __future__ import annotations

import os
from typing import Any

import pytest
from starlette.routing import Mount

from auth_service.app import create_app
from auth_service.settings import AuthSettings

# Served but not operations of the API: FastAPI's own documentation routes, the Prometheus text format, and
# the web console's page and static files (its config.json is an operation and documented). Each is named
# here on purpose.
EXCLUDED = {
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
    # Their assets, served from the package (auth_service/api/docs.py), never from a CDN.
    ("GET", "/docs/swagger-ui-bundle.js"),
    ("GET", "/docs/swagger-ui.css"),
    ("GET", "/docs/favicon.png"),
    ("GET", "/redoc/redoc.standalone.js"),
    ("GET", "/metrics"),
    ("GET", "/console"),
    ("GET", "/console/"),
    ("GET", "/console/console.css"),
    ("GET", "/console/console.js"),
    ("GET", "/console/favicon.svg"),
}


@pytest.fixture
def document(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, dict[str, Any]]:
    for name in [n for n in os.environ if n.startswith("TOKENLIFE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("TOKENLIFE_ENV", "dev")
    app = create_app(AuthSettings())
    return app, app.openapi()


def _served(routes: list[Any], prefix: str = "") -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            found |= _served(included.routes, prefix + route.include_context.prefix)
        elif isinstance(route, Mount):
            found.add(("MOUNT", prefix + route.path))
        else:
            found |= {(method, prefix + route.path) for method in (route.methods or set()) - {"HEAD"}}
    return found


def _operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): operation
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
    }


def test_every_mounted_route_is_documented_and_every_documented_route_is_mounted(
    document: tuple[Any, dict[str, Any]],
) -> None:
    app, doc = document
    served, documented = _served(app.routes), set(_operations(doc))
    assert documented <= served, documented - served
    assert served - documented <= EXCLUDED, served - documented - EXCLUDED
    assert not documented & EXCLUDED


def test_every_error_answer_uses_the_one_error_body_and_there_is_no_422(
    document: tuple[Any, dict[str, Any]],
) -> None:
    _app, doc = document
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    assert "400" in doc["info"]["description"]
    assert "never answers 422" in doc["info"]["description"]
    for (method, path), operation in _operations(doc).items():
        responses = operation["responses"]
        assert "422" not in responses, (method, path)
        for status, answer in responses.items():
            if status.startswith(("4", "5")) and path != "/readyz":
                schema = answer["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/OAuthErrorBody"}, (method, path, status)
        if operation.get("security"):
            assert "401" in responses, (method, path)
        if "requestBody" in operation:
            assert {"400", "413"} <= set(responses), (method, path)


def test_form_schemas_say_what_the_server_accepts(document: tuple[Any, dict[str, Any]]) -> None:
    _app, doc = document
    ops = _operations(doc)

    def form(method: str, path: str) -> dict[str, Any]:
        body = ops[(method, path)]["requestBody"]
        schema: dict[str, Any] = body["content"]["application/x-www-form-urlencoded"]["schema"]
        return {"required": body["required"], **schema}

    token = form("POST", "/oauth/token")
    assert [v["properties"]["grant_type"]["enum"] for v in token["oneOf"]] == [
        ["password"],
        ["refresh_token"],
        ["client_credentials"],
    ]
    assert token["oneOf"][2]["required"] == ["grant_type"]  # the client authenticates with HTTP Basic
    logout = form("POST", "/v1/auth/logout")
    assert logout["required"] is False  # the body is optional
    assert logout["properties"]["scope"]["enum"] == ["", "session", "others", "all"]
    revoke = form("POST", "/oauth/revoke")
    assert revoke["properties"]["token"]["minLength"] == 1
    assert "maxLength" not in revoke["properties"]["token"]  # RFC 7009: any token, up to the body limit
    password = form("POST", "/v1/auth/password")
    assert password["properties"]["new_password"]["minLength"] == 8
    assert password["properties"]["current_password"]["minLength"] == 1
