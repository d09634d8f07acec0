"""The auth service's API documentation, /docs (Swagger UI) and /redoc (ReDoc), in Chromium with no network.

Every request the pages make to anywhere but the auth service itself is refused, as on a machine offline: the
pages must still render the API, from assets the service serves itself.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

pytest.importorskip("playwright", reason="Playwright is not installed: pip install -e '.[browser]'")

from playwright.sync_api import Browser, Route, expect  # noqa: E402

from tests.browser.conftest import Stack  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.integration]

TITLE = "tokenlife auth service"


def test_docs_and_redoc_render_the_api_with_no_network_beyond_the_service(
    browser: Browser, stack_factory: Callable[..., Stack]
) -> None:
    stack = stack_factory()
    context = browser.new_context()
    outside: list[str] = []

    def offline(route: Route) -> None:
        if route.request.url.startswith(f"{stack.auth_url}/"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort("internetdisconnected")

    context.route("**/*", offline)
    page = context.new_page()
    page.set_default_timeout(15_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    page.goto(f"{stack.auth_url}/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text(TITLE)
    expect(page.locator(".swagger-ui .opblock-summary-path", has_text="/oauth/revoke")).to_be_visible()

    page.goto(f"{stack.auth_url}/redoc")
    expect(page.locator("h1", has_text=TITLE)).to_be_visible()
    expect(page.get_by_text("Revoke an access or refresh token (RFC 7009)").first).to_be_attached()

    context.close()
    assert outside == []
    assert errors == []
